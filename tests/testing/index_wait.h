// WaitForIndexes: polls GetSession until no layer of a session is building its index.
// The server answers Retrieve items exactly while a layer's index builds, so tests that
// need the index itself (the codes' selections, the codes' memory) wait for it first.
#ifndef PQKV_TESTS_TESTING_INDEX_WAIT_H_
#define PQKV_TESTS_TESTING_INDEX_WAIT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/pqkv_client.h"

namespace pqkv::testing {

// OK once no layer is building; DEADLINE_EXCEEDED after `timeout`; GetSession's error.
absl::Status WaitForIndexes(Client& client, const std::string& session_id,
                            absl::Duration timeout = absl::Seconds(120));

}  // namespace pqkv::testing

#endif  // PQKV_TESTS_TESTING_INDEX_WAIT_H_
