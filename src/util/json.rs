//! JSON helpers.

use serde_json::Value;

/// Renames an object's keys to the canonical spelling in `names` when they match it
/// case-insensitively, as Go's encoding/json (and so Consul and consul_servant) reads them.
/// Keys that match no name are kept as they are.
pub fn canonical_keys(v: &mut Value, names: &[&str]) {
    if let Value::Object(map) = v {
        let old = std::mem::take(map);
        for (k, val) in old {
            let key = names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(&k))
                .map(|n| n.to_string())
                .unwrap_or(k);
            map.insert(key, val);
        }
    }
}

/// The name of a JSON value's kind, for messages ("a number").
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_case_insensitively() {
        let mut v = serde_json::json!({"name": "a", "TTL": "10s", "lockdelay": "1s", "other": 1});
        canonical_keys(&mut v, &["Name", "TTL", "LockDelay"]);
        assert_eq!(
            v,
            serde_json::json!({"Name": "a", "TTL": "10s", "LockDelay": "1s", "other": 1})
        );
    }
}
