// WaitForNoBytesHeld: polls GetServerStats until the server holds no K/V or index bytes.
// Closing a session hands its pages back once the calls and background work already
// running on it (a quality sample being measured, an index refresh) let go of it, a moment
// after CloseSession returns; a leak still fails, at the deadline.
#ifndef PQKV_TESTS_TESTING_BYTES_HELD_WAIT_H_
#define PQKV_TESTS_TESTING_BYTES_HELD_WAIT_H_

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/pqkv_client.h"

namespace pqkv::testing {

// OK once bytes_held is 0; DEADLINE_EXCEEDED naming what is still held after `timeout`;
// GetServerStats's error.
absl::Status WaitForNoBytesHeld(Client& client, absl::Duration timeout = absl::Seconds(30));

}  // namespace pqkv::testing

#endif  // PQKV_TESTS_TESTING_BYTES_HELD_WAIT_H_
