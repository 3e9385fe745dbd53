#include "tests/testing/index_wait.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace pqkv::testing {

absl::Status WaitForIndexes(Client& client, const std::string& session_id, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<SessionInfo> info = client.GetSession(session_id);
    if (!info.ok()) return info.status();
    if (std::none_of(info->layers.begin(), info->layers.end(),
                     [](const LayerInfo& l) { return l.index_state == IndexState::kBuilding; })) {
      return absl::OkStatus();
    }
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(absl::StrCat("session ", session_id,
                                                      " still building an index after ",
                                                      absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
}

}  // namespace pqkv::testing
