//! The fields of a saved adapter's config, read by their type. A field that is there must have
//! its type: a string where a number belongs is an error naming the field, never the default
//! (`null` is PEFT's way of writing an unset field, and reads as absent).

use serde_json::Value;

/// The field `key` when present and not null.
fn given<'a>(json: &'a Value, key: &str) -> Option<&'a Value> {
    json.get(key).filter(|v| !v.is_null())
}

/// A number.
pub(crate) fn number(json: &Value, key: &str) -> Result<Option<f64>, String> {
    given(json, key)
        .map(|v| v.as_f64().ok_or_else(|| format!("{key} must be a number, found {v}")))
        .transpose()
}

/// A whole number of at least 0.
pub(crate) fn count(json: &Value, key: &str) -> Result<Option<usize>, String> {
    given(json, key)
        .map(|v| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("{key} must be a whole number, found {v}"))
        })
        .transpose()
}

/// `true` or `false`.
pub(crate) fn flag(json: &Value, key: &str) -> Result<Option<bool>, String> {
    given(json, key)
        .map(|v| v.as_bool().ok_or_else(|| format!("{key} must be true or false, found {v}")))
        .transpose()
}

/// A string.
pub(crate) fn text<'a>(json: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    given(json, key)
        .map(|v| v.as_str().ok_or_else(|| format!("{key} must be a string, found {v}")))
        .transpose()
}
