//! Listings a page at a time, in (creation time, id) order. Cursors are opaque to clients:
//! hex of `created_at` and id of the last item served.

use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// Largest page of a listing.
pub const LIST_LIMIT_MAX: usize = 1000;
const LIST_LIMIT_DEFAULT: usize = 100;

/// A listing's page size: 1 to [`LIST_LIMIT_MAX`], 100 unless given.
pub(crate) fn check_limit(limit: Option<usize>) -> ApiResult<usize> {
    let limit = limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_limit",
            format!("limit is 1 to {LIST_LIMIT_MAX}"),
        ));
    }
    Ok(limit)
}

/// Where a page ends: listings are in (creation time, id) order.
pub(crate) fn encode_cursor(created_at: &str, id: Uuid) -> String {
    hex::encode(format!("{created_at} {id}"))
}

/// The page's start, from the previous page's `next_cursor` (none or empty: the first page).
pub(crate) fn decode_cursor(c: Option<&str>) -> ApiResult<Option<(String, Uuid)>> {
    let Some(c) = c.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let bad = || ApiError::bad("invalid_cursor", "cursor is not one this API returned");
    let text = String::from_utf8(hex::decode(c).map_err(|_| bad())?).map_err(|_| bad())?;
    let (t, id) = text.split_once(' ').ok_or_else(bad)?;
    Ok(Some((
        t.to_string(),
        Uuid::parse_str(id).map_err(|_| bad())?,
    )))
}
