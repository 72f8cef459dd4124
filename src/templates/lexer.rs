//! Tokens of Go's text/template syntax.
//!
//! Trim markers and comments are resolved here, so the parser never sees them. A lexing error
//! becomes an `Error` token at its place in the stream (and ends it): the parser then reports
//! errors in text order, as Go's concurrent lexer does, instead of a late lexing error hiding an
//! earlier parse error.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// Text outside actions, already trimmed.
    Text(String),
    /// `{{` (with or without its trim marker).
    Open,
    /// `}}` (with or without its trim marker).
    Close,
    /// A bare word: function names and keywords (`if`, `true`, `nil`, ...).
    Ident(String),
    /// `.Name`, without the dot.
    Field(String),
    /// `$name` without the `$`; `$` alone is the empty name.
    Var(String),
    Dot,
    /// String and number literals.
    Lit(Value),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
    Error(LexError),
    Eof,
}

/// Why the text is no template, in Go's words (the parser adds the name and line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LexError {
    #[error("unclosed comment")]
    UnclosedComment,
    #[error("comment ends before closing delimiter")]
    CommentNotClosed,
    #[error("unclosed action")]
    UnclosedAction,
    #[error("expected :=")]
    ExpectedDeclare,
    #[error("unexpected {0:?} in command")]
    Unexpected(char),
    #[error("unterminated raw quoted string")]
    UnterminatedRaw,
    #[error("unterminated quoted string")]
    Unterminated,
    #[error("unknown escape sequence \\{0}")]
    UnknownEscape(char),
    #[error("invalid escape sequence in string: {0:?}")]
    EscapeDigit(char),
    #[error("non-ASCII byte escape in string")]
    NonAsciiByte,
    #[error("invalid Unicode escape in string")]
    BadUnicode,
    #[error("bad number syntax: {0:?}")]
    BadNumber(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub line: usize,
    /// Whether whitespace (or a delimiter) precedes the token: `$x.Field` is a chain, `$x .Field`
    /// two operands.
    pub spaced: bool,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_word(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    out: Vec<Token>,
}

/// Tokenizes the whole text. The result always ends with `Eof` or `Error`.
pub(crate) fn lex(src: &str) -> Vec<Token> {
    let mut lx = Lexer {
        src,
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    let mut trim_next = false;
    loop {
        let rest = &src[lx.pos..];
        let end = rest.find("{{").map_or(src.len(), |i| lx.pos + i);
        let mut text = &src[lx.pos..end];
        let text_line = lx.line;
        lx.line += text.matches('\n').count();
        if trim_next {
            text = text.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8));
        }
        lx.pos = end;
        if end == src.len() {
            if !text.is_empty() {
                lx.push(Kind::Text(text.to_string()), text_line, true);
            }
            lx.push(Kind::Eof, lx.line, true);
            return lx.out;
        }
        // Go's rule: `{{-` trims only when a space follows, otherwise `{{-3}}` is a number.
        let after = &src.as_bytes()[end + 2..];
        let left_trim = after.len() >= 2 && after[0] == b'-' && is_space(after[1]);
        if left_trim {
            text = text.trim_end_matches(|c: char| c.is_ascii() && is_space(c as u8));
        }
        if !text.is_empty() {
            lx.push(Kind::Text(text.to_string()), text_line, true);
        }
        lx.pos += if left_trim { 3 } else { 2 };
        match lx.action() {
            Ok(trim) => trim_next = trim,
            Err(()) => return lx.out,
        }
    }
}

impl Lexer<'_> {
    fn push(&mut self, kind: Kind, line: usize, spaced: bool) {
        self.out.push(Token { kind, line, spaced });
    }

    fn fail(&mut self, line: usize, e: LexError) -> Result<bool, ()> {
        self.push(Kind::Error(e), line, true);
        Err(())
    }

    fn bytes(&self) -> &[u8] {
        &self.src.as_bytes()[self.pos..]
    }

    /// If a right delimiter (with or without trim marker) starts here, its length and whether it
    /// trims.
    fn at_close(&self) -> Option<(usize, bool)> {
        let b = self.bytes();
        if b.starts_with(b"}}") {
            return Some((2, false));
        }
        if b.len() >= 4 && is_space(b[0]) && &b[1..4] == b"-}}" {
            return Some((4, true));
        }
        None
    }

    /// Lexes one action after its `{{`; returns whether it ends with a trim marker.
    fn action(&mut self) -> Result<bool, ()> {
        let open_line = self.line;
        // A comment must follow the delimiter (and its trim marker) directly, as in Go.
        self.skip_spaces_if_comment();
        if self.bytes().starts_with(b"/*") {
            let Some(end) = self.src[self.pos + 2..].find("*/") else {
                return self.fail(open_line, LexError::UnclosedComment);
            };
            let body = &self.src[self.pos..self.pos + 2 + end + 2];
            self.line += body.matches('\n').count();
            self.pos += body.len();
            return match self.at_close() {
                Some((n, trim)) => {
                    self.pos += n;
                    Ok(trim)
                }
                None => self.fail(self.line, LexError::CommentNotClosed),
            };
        }
        self.push(Kind::Open, open_line, true);
        let mut spaced = true;
        loop {
            if let Some((n, trim)) = self.at_close() {
                self.push(Kind::Close, self.line, true);
                self.pos += n;
                return Ok(trim);
            }
            let Some(c) = self.src[self.pos..].chars().next() else {
                return self.fail(open_line, LexError::UnclosedAction);
            };
            let line = self.line;
            if c.is_ascii() && is_space(c as u8) {
                if c == '\n' {
                    self.line += 1;
                }
                self.pos += 1;
                spaced = true;
                continue;
            }
            let kind = match c {
                '|' => self.single(Kind::Pipe),
                '(' => self.single(Kind::LParen),
                ')' => self.single(Kind::RParen),
                ',' => self.single(Kind::Comma),
                '=' => self.single(Kind::Assign),
                ':' => {
                    if self.bytes().starts_with(b":=") {
                        self.pos += 2;
                        Kind::Declare
                    } else {
                        return self.fail(line, LexError::ExpectedDeclare);
                    }
                }
                '"' => match self.quoted() {
                    Ok(s) => Kind::Lit(Value::String(s)),
                    Err(e) => return self.fail(line, e),
                },
                '`' => match self.raw() {
                    Ok(s) => Kind::Lit(Value::String(s)),
                    Err(e) => return self.fail(line, e),
                },
                '$' => {
                    self.pos += 1;
                    Kind::Var(self.word().to_string())
                }
                '.' => {
                    let next = self.bytes().get(1).copied();
                    match next {
                        Some(d) if d.is_ascii_digit() => match self.number() {
                            Ok(v) => Kind::Lit(v),
                            Err(e) => return self.fail(line, e),
                        },
                        _ => {
                            self.pos += 1;
                            let w = self.word();
                            if w.is_empty() {
                                Kind::Dot
                            } else {
                                Kind::Field(w.to_string())
                            }
                        }
                    }
                }
                '0'..='9' | '+' | '-' => match self.number() {
                    Ok(v) => Kind::Lit(v),
                    Err(e) => return self.fail(line, e),
                },
                c if is_word(c) => Kind::Ident(self.word().to_string()),
                c => return self.fail(line, LexError::Unexpected(c)),
            };
            self.push(kind, line, spaced);
            spaced = false;
        }
    }

    /// Comments may be preceded by the trim marker's space: `{{- /* x */ -}}`.
    fn skip_spaces_if_comment(&mut self) {
        let b = self.bytes();
        let n = b.iter().take_while(|c| is_space(**c)).count();
        if b[n..].starts_with(b"/*") {
            self.line += b[..n].iter().filter(|c| **c == b'\n').count();
            self.pos += n;
        }
    }

    fn single(&mut self, k: Kind) -> Kind {
        self.pos += 1;
        k
    }

    fn word(&mut self) -> &str {
        let start = self.pos;
        let len: usize = self.src[start..]
            .chars()
            .take_while(|c| is_word(*c))
            .map(char::len_utf8)
            .sum();
        self.pos += len;
        &self.src[start..start + len]
    }

    fn raw(&mut self) -> Result<String, LexError> {
        let body = &self.src[self.pos + 1..];
        let Some(end) = body.find('`') else {
            return Err(LexError::UnterminatedRaw);
        };
        let s = body[..end].to_string();
        self.line += s.matches('\n').count();
        self.pos += end + 2;
        Ok(s)
    }

    /// A double-quoted string with Go's escapes.
    fn quoted(&mut self) -> Result<String, LexError> {
        let mut out = String::new();
        let mut chars = self.src[self.pos + 1..].char_indices();
        let unterminated = || LexError::Unterminated;
        loop {
            let (i, c) = chars.next().ok_or_else(unterminated)?;
            match c {
                '"' => {
                    self.pos += 1 + i + 1;
                    return Ok(out);
                }
                '\n' => return Err(unterminated()),
                '\\' => {
                    let (_, e) = chars.next().ok_or_else(unterminated)?;
                    let simple = match e {
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        'f' => Some('\x0c'),
                        'n' => Some('\n'),
                        'r' => Some('\r'),
                        't' => Some('\t'),
                        'v' => Some('\x0b'),
                        '\\' => Some('\\'),
                        '"' => Some('"'),
                        _ => None,
                    };
                    if let Some(s) = simple {
                        out.push(s);
                        continue;
                    }
                    let (digits, radix) = match e {
                        'x' => (2, 16),
                        'u' => (4, 16),
                        'U' => (8, 16),
                        '0'..='7' => (2, 8),
                        '\n' => return Err(unterminated()),
                        _ => return Err(LexError::UnknownEscape(e)),
                    };
                    let mut code = if radix == 8 {
                        e.to_digit(8).unwrap_or(0)
                    } else {
                        0
                    };
                    for _ in 0..digits {
                        let (_, d) = chars.next().ok_or_else(unterminated)?;
                        let v = d.to_digit(radix).ok_or(LexError::EscapeDigit(d))?;
                        code = code.saturating_mul(radix).saturating_add(v);
                    }
                    if e == 'x' || radix == 8 {
                        // Go's \x and octal escapes are bytes; only ASCII ones make valid text.
                        if code > 0x7f {
                            return Err(LexError::NonAsciiByte);
                        }
                    }
                    out.push(char::from_u32(code).ok_or(LexError::BadUnicode)?);
                }
                c => out.push(c),
            }
        }
    }

    /// A Go number: optional sign, decimal, hex, octal or binary integer, or a float.
    fn number(&mut self) -> Result<Value, LexError> {
        let start = self.pos;
        let b = self.src.as_bytes();
        let mut i = start;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        while i < b.len() {
            let c = b[i];
            let exp_sign = (c == b'+' || c == b'-')
                && i > start
                && matches!(b[i - 1], b'e' | b'E' | b'p' | b'P')
                && !self.src[start..i].to_ascii_lowercase().contains('x');
            if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exp_sign {
                i += 1;
            } else {
                break;
            }
        }
        let text = &self.src[start..i];
        self.pos = i;
        parse_number(text).ok_or_else(|| LexError::BadNumber(text.to_string()))
    }
}

fn parse_number(text: &str) -> Option<Value> {
    let (neg, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') {
        return None;
    }
    let clean = body.replace('_', "");
    let lower = clean.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        i128::from_str_radix(o, 8).ok()
    } else if let Some(bn) = lower.strip_prefix("0b") {
        i128::from_str_radix(bn, 2).ok()
    } else if lower.len() > 1 && lower.starts_with('0') && lower.bytes().all(|c| c.is_ascii_digit())
    {
        i128::from_str_radix(&lower[1..], 8).ok()
    } else if lower.bytes().all(|c| c.is_ascii_digit()) {
        lower.parse::<i128>().ok()
    } else {
        None
    };
    if let Some(n) = int {
        let n = if neg { -n } else { n };
        return crate::templates::funcs::int_value(n).ok();
    }
    if lower.starts_with("0x") || lower.contains("inf") || lower.contains("nan") {
        return None;
    }
    let f: f64 = lower.parse().ok()?;
    let f = if neg { -f } else { f };
    serde_json::Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<Kind> {
        lex(s).into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn trim_markers_and_comments() {
        assert_eq!(
            kinds("a  {{- /* c */ -}}  b"),
            vec![Kind::Text("a".into()), Kind::Text("b".into()), Kind::Eof]
        );
        assert_eq!(
            kinds("{{-3}}"),
            vec![
                Kind::Open,
                Kind::Lit(Value::from(-3)),
                Kind::Close,
                Kind::Eof
            ]
        );
    }

    #[test]
    fn numbers_and_strings() {
        assert_eq!(parse_number("0x1F"), Some(Value::from(31)));
        assert_eq!(parse_number("1_000"), Some(Value::from(1000)));
        assert_eq!(parse_number("1.5e3"), Some(Value::from(1500.0)));
        assert_eq!(parse_number("1.2.3"), None);
        assert_eq!(
            kinds(r#"{{"a\tb\u00e9"}}"#)[1],
            Kind::Lit(Value::from("a\tb\u{e9}"))
        );
    }

    #[test]
    fn lines_are_counted() {
        let toks = lex("a\nb{{\n.X}}\n{{`x\ny`}}{{.Y}}");
        let y = toks.iter().find(|t| t.kind == Kind::Field("Y".into()));
        assert_eq!(y.map(|t| t.line), Some(5));
    }
}
