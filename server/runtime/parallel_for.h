// ParallelFor: runs fn(i) for i in [0, n) on the calling thread and on idle threads of
// a pool, and returns when all are done.
//
// Deadlock-free inside pool threads: the caller claims indices itself, so it never waits
// for work that no thread has started; it waits only for indices already running.
#ifndef PQKV_SERVER_RUNTIME_PARALLEL_FOR_H_
#define PQKV_SERVER_RUNTIME_PARALLEL_FOR_H_

#include <functional>

#include "server/runtime/thread_pool.h"

namespace pqkv::server {

// pool may be null (everything runs on the caller).
void ParallelFor(ThreadPool* pool, int n, const std::function<void(int)>& fn);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RUNTIME_PARALLEL_FOR_H_
