//! `servant kv get|keys|list|put|delete|deltree`, and consul_visa's `kv-*` aliases.

use std::io::Read;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::Ctx;
use crate::consul::{KvPutOptions, QueryOptions};

#[derive(Debug, Args)]
pub struct KeyArg {
    pub key: String,
}

#[derive(Debug, Args)]
pub struct PrefixArg {
    #[arg(default_value = "")]
    pub prefix: String,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[arg(default_value = "")]
    pub prefix: String,
    /// Fold keys at this separator, like `consul kv get -keys -separator`.
    #[arg(long)]
    pub separator: Option<String>,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; `-` reads stdin, `@FILE` reads a file.
    #[arg(allow_hyphen_values = true)]
    pub value: Option<String>,
    /// Flags stored with the key.
    #[arg(long)]
    pub flags: Option<u64>,
    /// Write only if the key's ModifyIndex is this (0: only if absent).
    #[arg(long)]
    pub cas: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get(KeyArg),
    /// List key names under a prefix.
    Keys(KeysArgs),
    /// List keys and values under a prefix.
    List(PrefixArg),
    /// Write a key.
    Put(PutArgs),
    /// Delete one key.
    Delete(KeyArg),
    /// Delete every key under a prefix.
    Deltree(PrefixArg),
}

pub async fn run(ctx: &Ctx, cmd: KvCommand) -> anyhow::Result<i32> {
    let q = QueryOptions::default();
    match cmd {
        KvCommand::Get(a) => match ctx.client.kv_get_raw(&a.key).await? {
            Some(mut v) => {
                // As `consul kv get`: the value and a newline, always.
                v.push(b'\n');
                crate::util::output::write(&v)?;
            }
            None => bail!("key not found: {}", a.key),
        },
        KvCommand::Keys(a) => {
            let (keys, _) = ctx
                .client
                .kv_keys(&a.prefix, a.separator.as_deref(), &q)
                .await?;
            for k in keys {
                outln!("{k}");
            }
        }
        KvCommand::List(a) => {
            let (entries, _) = ctx.client.kv_list(&a.prefix, &q).await?;
            for e in entries {
                outln!("{}={}", e.key, e.value_str());
            }
        }
        KvCommand::Put(a) => {
            let value = match a.value.as_deref() {
                Some("-") => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v)?;
                    v
                }
                Some(s) if s.starts_with('@') => std::fs::read(&s[1..])
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", &s[1..]))?,
                Some(s) => s.as_bytes().to_vec(),
                None => Vec::new(),
            };
            if !ctx
                .client
                .kv_put(
                    &a.key,
                    &value,
                    &KvPutOptions {
                        flags: a.flags,
                        cas: a.cas,
                        ..Default::default()
                    },
                )
                .await?
            {
                bail!(
                    "write refused: {} changed since index {}",
                    a.key,
                    a.cas.unwrap_or(0)
                );
            }
            eprintln!("wrote {}", a.key);
        }
        KvCommand::Delete(a) => {
            ctx.client.kv_delete(&a.key, false, None).await?;
            eprintln!("deleted {}", a.key);
        }
        KvCommand::Deltree(a) => {
            if a.prefix.is_empty() {
                bail!("refusing to delete the whole KV store: give a prefix");
            }
            ctx.client.kv_delete(&a.prefix, true, None).await?;
            eprintln!("deleted tree {}", a.prefix);
        }
    }
    Ok(0)
}
