#!/usr/bin/env bash
# Every curl command of the Workspaces API reference this API implements, as written, with
# <workspace> replaced by a real selector, against CHASER_API_URL with CHASER_API_KEY. jq checks
# each answer. CHASER_MOUNT_ROOT is where the script may start a session; the daemon's
# --github-url must serve owner/repo. Run by tests/seed.rs.
set -euo pipefail

# check FILTER: the JSON on stdin must satisfy the jq filter.
check() {
  local json
  json=$(cat)
  if ! jq -e "$1" >/dev/null <<<"$json"; then
    echo "check failed: $1" >&2
    echo "$json" >&2
    exit 1
  fi
}

echo "== Fresh workspace"
curl -sS "$CHASER_API_URL/v1/workspaces" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
  "session_type": "sandbox",
  "name": "my-project",
  "image": "ghcr.io/example/dev:latest"
  }' | jq | check '.name == "my-project" and .session_type == "sandbox" and .image == "ghcr.io/example/dev:latest" and .status == "ready" and .template == false'

# Something to find in the clone: a session writes a file and ends.
session=$(curl -sS "$CHASER_API_URL/v1/sessions" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d "{\"workspace\": \"my-project\", \"mountpoint\": \"$CHASER_MOUNT_ROOT/seed\"}" | jq -r .id)
echo "hello from my-project" > "$CHASER_MOUNT_ROOT/seed/hello.txt"
curl -sS -X DELETE "$CHASER_API_URL/v1/sessions/$session" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '.status == "ended"'

echo "== Cloned workspace"
curl -sS "$CHASER_API_URL/v1/workspaces" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
  "clone_from": "my-project",
  "name": "my-project-feature"
  }' | jq | check '.name == "my-project-feature" and .session_type == "sandbox" and .image == "ghcr.io/example/dev:latest" and .persistence.files == 2'

echo "== Import from GitHub"
curl -sS "$CHASER_API_URL/v1/workspaces/import" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"github_repo": "owner/repo"}' | jq | check '.status == "importing" and .github_repo == "owner/repo"'
for _ in $(seq 1 600); do
  status=$(curl -sS "$CHASER_API_URL/v1/workspaces/repo" -H "Authorization: Bearer $CHASER_API_KEY" | jq -r .status)
  [ "$status" = importing ] || break
  sleep 0.1
done
curl -sS "$CHASER_API_URL/v1/workspaces/repo" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '.status == "ready" and .github_repo == "owner/repo" and .persistence.files > 3'

echo "== List workspaces"
curl -sS "$CHASER_API_URL/v1/workspaces" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '[.workspaces[].name] == ["my-project", "my-project-feature", "repo"] and (.workspaces | all(has("id") and has("name") and has("session_type") and has("status") and has("image") and has("template") and has("active_session_id") and has("last_session_id") and has("persistence")))'

echo "== Naming"
# Set a name
curl -sS -X PUT "$CHASER_API_URL/v1/workspaces/my-project-feature/name" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"name": "new-name"}' | jq | check '.name == "new-name"'
feature_id=$(curl -sS "$CHASER_API_URL/v1/workspaces/new-name" -H "Authorization: Bearer $CHASER_API_KEY" | jq -r .id)

# Clear the name
curl -sS -X PUT "$CHASER_API_URL/v1/workspaces/new-name/name" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"name": null}' | jq | check ".name == null and .id == \"$feature_id\""

echo "== Templates"
# Enable template mode
curl -sS -X PUT "$CHASER_API_URL/v1/workspaces/my-project/template" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"template": true}' | jq | check '.template == true'

echo "== Snapshots"
# Create
curl -sS -X POST "$CHASER_API_URL/v1/workspaces/my-project/snapshots" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"name": "before-upgrade"}' | jq | check '.name == "before-upgrade" and .files == 2'

# List
curl -sS "$CHASER_API_URL/v1/workspaces/my-project/snapshots" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '[.snapshots[].name] == ["before-upgrade"]'

# A session that changes the workspace, left active: restore with force ends it first.
session=$(curl -sS "$CHASER_API_URL/v1/sessions" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d "{\"workspace\": \"my-project\", \"mountpoint\": \"$CHASER_MOUNT_ROOT/seed\"}" | jq -r .id)
echo "changed after the snapshot" > "$CHASER_MOUNT_ROOT/seed/hello.txt"

# Restore (force terminates active sessions)
curl -sS -X POST "$CHASER_API_URL/v1/workspaces/my-project/snapshots/before-upgrade/restore" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"force": true}' | jq | check ".active_session_id == null and .last_session_id == \"$session\""
curl -sS "$CHASER_API_URL/v1/sessions/$session" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '.status == "ended"'

# Delete
curl -sS -X DELETE "$CHASER_API_URL/v1/workspaces/my-project/snapshots/before-upgrade" \
  -H "Authorization: Bearer $CHASER_API_KEY"
curl -sS "$CHASER_API_URL/v1/workspaces/my-project/snapshots" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '.snapshots == []'

# The operator's view: every account's sessions, with their accounts (an account the
# accounts file makes `operator = true`; without a keys file, the one account `default`)
curl -sS "$CHASER_API_URL/v1/admin/sessions?status=ended&limit=10" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '.sessions[0].account == "default" and (.sessions | length) >= 1'

echo "== Delete"
# Single workspace
curl -sS -X DELETE "$CHASER_API_URL/v1/workspaces/my-project?force=true" \
  -H "Authorization: Bearer $CHASER_API_KEY"
curl -sS "$CHASER_API_URL/v1/workspaces/my-project" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '.error.code == "workspace_not_found"'

# Bulk delete
curl -sS -X POST "$CHASER_API_URL/v1/workspaces/bulk-delete" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{"workspace_ids": ["ws_1", "ws_2"], "force": true}' | jq | check '[.results[].status] == ["not_found", "not_found"] and .deleted == 0'
curl -sS -X POST "$CHASER_API_URL/v1/workspaces/bulk-delete" \
  -H "Authorization: Bearer $CHASER_API_KEY" \
  -H "Content-Type: application/json" \
  -d "{\"workspace_ids\": [\"$feature_id\", \"repo\"], \"force\": true}" | jq | check '[.results[].status] == ["deleted", "deleted"] and .deleted == 2'
curl -sS "$CHASER_API_URL/v1/workspaces" \
  -H "Authorization: Bearer $CHASER_API_KEY" | jq | check '.workspaces == []'

echo "seed commands: all passed"
