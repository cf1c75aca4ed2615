//! The rules of names: what a workspace or snapshot may be called, which names the API's own
//! paths keep, how generated names look, and what an image reference may be. The OpenAPI
//! document says the same with `model::NAME_PATTERN`; the service checks here, in code.

use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::model::SessionType;

/// Names of workspaces: what `PUT .../name` and `POST /v1/workspaces` accept.
pub const NAME_RULE: &str = "names are 1 to 64 characters, without control characters or '/', \
     without leading or trailing whitespace, and not '.' or '..'";
/// Names the API's own paths use under /v1/workspaces/.
pub(crate) const RESERVED_NAMES: [&str; 2] = ["import", "bulk-delete"];

/// Eight hex digits for a generated name (`ws-…`, `snap-…`).
pub(crate) fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Whether `name` is `lowercase` case-insensitively, without allocating: a workspace may
/// hold thousands of snapshots, and lookups compare against each.
pub(crate) fn named(name: &str, lowercase: &str) -> bool {
    name.chars()
        .flat_map(char::to_lowercase)
        .eq(lowercase.chars())
}

/// Checks a workspace or snapshot name against [`NAME_RULE`].
pub fn check_name_format(name: &str) -> ApiResult<()> {
    let n = name.chars().count();
    if n == 0
        || n > 64
        || name.trim() != name
        || name == "."
        || name == ".."
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(ApiError::bad("invalid_name", NAME_RULE));
    }
    Ok(())
}

pub(crate) fn check_image(image: &Option<String>, session_type: SessionType) -> ApiResult<()> {
    let Some(image) = image else { return Ok(()) };
    if session_type != SessionType::Sandbox {
        return Err(ApiError::bad(
            "image_not_allowed",
            "image applies to sandbox workspaces only",
        ));
    }
    if image.is_empty()
        || image.len() > 512
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad(
            "invalid_image",
            "image is an OCI reference of 1 to 512 characters without whitespace",
        ));
    }
    Ok(())
}
