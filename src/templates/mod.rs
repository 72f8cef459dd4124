//! Pure template engine for `servant template`, a consul-template replacement.
//!
//! Templates use Go's text/template syntax as consul-template files do. They are parsed once
//! into a [`Template`] and executed many times against JSON data; Consul lookups reach them only
//! through the caller's [`DataSource`], so nothing here does IO.
//!
//! The split: `lexer` turns text into tokens (trim markers and comments are resolved there),
//! `parser` builds the AST and reports every static error (unknown functions, undefined
//! variables, unbalanced blocks) with its line, `eval` walks the AST, `funcs` holds the built-in
//! functions and Go-like printing.

mod eval;
mod funcs;
mod lexer;
pub mod metrics;
mod parser;
pub mod runner;
pub mod source;

use serde_json::Value;

pub use funcs::BUILTINS;
pub use parser::Template;

/// Why a template could not be parsed or executed. Both messages read
/// `<template name>:<line>: <reason>`, lines counted from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The text is not a valid template.
    #[error("{name}:{line}: {reason}")]
    Parse {
        name: String,
        line: usize,
        reason: String,
    },
    /// The template is valid but failed on this data.
    #[error("{name}:{line}: {reason}")]
    Exec {
        name: String,
        line: usize,
        reason: String,
    },
}

impl TemplateError {
    /// The 1-based line the error points at.
    pub fn line(&self) -> usize {
        match self {
            TemplateError::Parse { line, .. } | TemplateError::Exec { line, .. } => *line,
        }
    }

    /// The reason without the name and line.
    pub fn reason(&self) -> &str {
        match self {
            TemplateError::Parse { reason, .. } | TemplateError::Exec { reason, .. } => reason,
        }
    }
}

/// Why a function failed while a template ran, in Go's or consul-template's words; the
/// evaluator adds the template's name and line. Tests pin these texts, so they stay text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FuncError(String);

impl From<String> for FuncError {
    fn from(s: String) -> Self {
        FuncError(s)
    }
}

impl From<&str> for FuncError {
    fn from(s: &str) -> Self {
        FuncError(s.to_string())
    }
}

/// Data functions provided by the caller (Consul lookups): `service`, `services`, `key`,
/// `keyOrDefault`, `keyExists`, `ls`, `safeLs`, `tree`, `safeTree`, `nodes`, `node`, `env`.
pub trait DataSource {
    /// Called for any function name not built in. `Ok(None)` means "no such function" (the
    /// evaluator then reports `function "x" not defined` with the line). `Err` is an execution
    /// error; the evaluator adds the template name and line.
    fn call(&mut self, name: &str, args: &[Value]) -> Result<Option<Value>, FuncError>;
    /// Names the data source knows, so that an unknown function is a parse-time error as in Go.
    fn names(&self) -> Vec<&'static str>;
}

/// Parses `text` (named `name` in errors). `data_funcs` are the names the data source answers;
/// any other name that is not built in is a parse error.
pub fn parse(name: &str, text: &str, data_funcs: &[&str]) -> Result<Template, TemplateError> {
    parser::parse(name, text, data_funcs)
}

#[cfg(test)]
mod tests;
