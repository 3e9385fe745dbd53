#include "tests/testing/bytes_held_wait.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace pqkv::testing {

absl::Status WaitForNoBytesHeld(Client& client, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<ServerStats> stats = client.GetServerStats();
    if (!stats.ok()) return stats.status();
    if (stats->bytes_held == 0) return absl::OkStatus();
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(
          absl::StrCat("the server still holds ", stats->bytes_held, " bytes in ",
                       stats->num_sessions, " sessions after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
}

}  // namespace pqkv::testing
