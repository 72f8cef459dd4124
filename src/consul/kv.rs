//! `/v1/kv`: get, list, keys, put (cas, acquire, release, flags), delete. Values are bytes.

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};

use super::client::{encode_key, Client, ConsulError, QueryMeta, QueryOptions};

/// One KV entry as Consul returns it, with the value decoded to bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    pub key: String,
    /// Raft index at which the key was created.
    pub create_index: u64,
    /// Raft index of the last write; never use it as a blocking index (see CONSUL-NOTES).
    pub modify_index: u64,
    /// Counts successful acquires; the job code uses it as the attempt number.
    pub lock_index: u64,
    /// Opaque 64-bit user flags.
    pub flags: u64,
    /// The value, decoded from base64; empty for a null value.
    #[serde(deserialize_with = "de_b64", serialize_with = "ser_b64")]
    pub value: Vec<u8>,
    /// The session holding the lock, if any.
    #[serde(default)]
    pub session: Option<String>,
}

impl KvPair {
    /// The value as UTF-8 text, lossily.
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
    /// The session holding the key, if any (Consul may send an empty string).
    pub fn holder(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }
}

/// Consul's base64 values (`null` is empty).
pub(crate) fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(Vec::new()),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom),
    }
}

fn ser_b64<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
}

/// Options of a KV PUT.
#[derive(Debug, Clone, Default)]
pub struct KvPutOptions {
    /// Opaque flags stored with the key.
    pub flags: Option<u64>,
    /// Check-and-set: 0 means "only if absent".
    pub cas: Option<u64>,
    /// Acquire the lock with this session.
    pub acquire: Option<String>,
    /// Release the lock held by this session.
    pub release: Option<String>,
}

impl Client {
    /// Reads one key. A missing key is `None`, not an error.
    pub async fn kv_get(
        &self,
        key: &str,
        q: &QueryOptions,
    ) -> Result<(Option<KvPair>, QueryMeta), ConsulError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let (v, meta) = self.get_json::<Vec<KvPair>>(&path, q, &[]).await?;
        Ok((
            v.and_then(|mut v| {
                if v.is_empty() {
                    None
                } else {
                    Some(v.swap_remove(0))
                }
            }),
            meta,
        ))
    }

    /// Reads a key's raw value (`?raw`). A missing key is `None`.
    pub async fn kv_get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, ConsulError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let r = self
            .query(&path, &QueryOptions::default())
            .query(&[("raw", "")]);
        let a = self.send("GET", &path, r).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(a.body))
    }

    /// Creates `key` with `value` unless it exists; true when it created it. Reads first: a
    /// refused check-and-set is still a Raft write. Used for folder keys (`jobs/`), which keep
    /// a watched prefix from ever being empty: an empty prefix answers a blocking read with the
    /// whole KV table's index, so its watch would wake at every write anywhere.
    pub async fn kv_ensure(&self, key: &str, value: &[u8]) -> Result<bool, ConsulError> {
        if self
            .kv_get(key, &QueryOptions::default())
            .await?
            .0
            .is_some()
        {
            return Ok(false);
        }
        let opts = KvPutOptions {
            cas: Some(0),
            ..Default::default()
        };
        self.kv_put(key, value, &opts).await
    }

    /// Every entry under `prefix` (`?recurse`). A missing prefix is an empty list.
    pub async fn kv_list(
        &self,
        prefix: &str,
        q: &QueryOptions,
    ) -> Result<(Vec<KvPair>, QueryMeta), ConsulError> {
        let path = format!("/v1/kv/{}", encode_key(prefix));
        let (v, meta) = self
            .get_json::<Vec<KvPair>>(&path, q, &[("recurse", String::new())])
            .await?;
        Ok((v.unwrap_or_default(), meta))
    }

    /// Key names under `prefix` (`?keys`), optionally folded at `separator`.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        q: &QueryOptions,
    ) -> Result<(Vec<String>, QueryMeta), ConsulError> {
        let path = format!("/v1/kv/{}", encode_key(prefix));
        let mut extra = vec![("keys", String::new())];
        if let Some(s) = separator {
            extra.push(("separator", s.to_string()));
        }
        let (v, meta) = self.get_json::<Vec<String>>(&path, q, &extra).await?;
        Ok((v.unwrap_or_default(), meta))
    }

    /// Writes a key. Returns Consul's verdict: false when a cas or acquire did not happen.
    pub async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        opts: &KvPutOptions,
    ) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let mut r = self.request(Method::PUT, &path).body(value.to_vec());
        if let Some(f) = opts.flags {
            r = r.query(&[("flags", f.to_string())]);
        }
        if let Some(c) = opts.cas {
            r = r.query(&[("cas", c.to_string())]);
        }
        if let Some(s) = &opts.acquire {
            r = r.query(&[("acquire", s)]);
        }
        if let Some(s) = &opts.release {
            r = r.query(&[("release", s)]);
        }
        self.bool_answer("PUT", path, r).await
    }

    /// Deletes a key, or a whole tree with `recurse`. `cas` deletes only at that ModifyIndex.
    pub async fn kv_delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let mut r = self.request(Method::DELETE, &path);
        if recurse {
            r = r.query(&[("recurse", "")]);
        }
        if let Some(c) = cas {
            r = r.query(&[("cas", c.to_string())]);
        }
        self.bool_answer("DELETE", path, r).await
    }

    async fn bool_answer(
        &self,
        method: &str,
        path: String,
        r: reqwest::RequestBuilder,
    ) -> Result<bool, ConsulError> {
        let a = self.send(method, &path, r).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Err(ConsulError::Status {
                status: 404,
                method: method.into(),
                path,
                body: a.text(),
            });
        }
        Ok(a.text().trim() == "true")
    }
}
