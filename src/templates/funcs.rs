//! Built-in functions (Go's and consul-template's helpers) and Go-like printing of JSON values.
//!
//! Argument order follows consul-template, which puts the "subject" last so that a pipeline's
//! value (passed as the last argument) lands on it: `{{ .Port | add 1 }}`,
//! `{{ .Tags | join "," }}`.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::FuncError;

/// Every function the engine answers itself; any other name goes to the [`super::DataSource`].
pub const BUILTINS: &[&str] = &[
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "len",
    "index",
    "print",
    "printf",
    "println",
    "contains",
    "in",
    "join",
    "split",
    "toJSON",
    "toJSONPretty",
    "parseJSON",
    "toLower",
    "toUpper",
    "toTitle",
    "trimSpace",
    "replaceAll",
    "regexMatch",
    "regexReplaceAll",
    "timestamp",
    "add",
    "subtract",
    "multiply",
    "divide",
    "modulo",
    "byTag",
];

pub(crate) fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name)
}

/// An integer as JSON: i64 when it fits, else u64, else an overflow error.
pub(crate) fn int_value(n: i128) -> Result<Value, FuncError> {
    if let Ok(i) = i64::try_from(n) {
        Ok(Value::from(i))
    } else if let Ok(u) = u64::try_from(n) {
        Ok(Value::from(u))
    } else {
        Err("integer overflow".into())
    }
}

/// Go's truth: false, 0, "", nil and empty collections are false.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// What an action prints: like `%v`, except that a nil value prints as `<no value>` (Go's output
/// for a missing map key).
pub(crate) fn print_top(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        v => fmt_v(v),
    }
}

/// Go's `%v` of the value Go's JSON decoding would give.
pub(crate) fn fmt_v(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => fmt_number(n),
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(fmt_v).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| format!("{k}:{}", fmt_v(&o[*k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

fn fmt_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        fmt_float(n.as_f64().unwrap_or(0.0))
    }
}

/// Go's `%v` for float64 (strconv's shortest `%g`): exponent form when the decimal exponent is
/// below -4 or at least 6, so 1e6 prints `1e+06` as in Go.
pub(crate) fn fmt_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        format!("{f}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

/// Go's type name of the value, for `%!d(string=x)`-style printf complaints and errors.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(v: &Value, func: &str) -> Result<Num, FuncError> {
    match v {
        Value::Number(n) => Ok(if let Some(i) = n.as_i64() {
            Num::Int(i as i128)
        } else if let Some(u) = n.as_u64() {
            Num::Int(u as i128)
        } else {
            Num::Float(n.as_f64().unwrap_or(0.0))
        }),
        other => Err(format!("{func}: expected a number, got {}", type_name(other)).into()),
    }
}

fn float_value(f: f64) -> Result<Value, FuncError> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| "arithmetic result is not a finite number".into())
}

fn as_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

fn want(name: &str, args: &[Value], n: usize) -> Result<(), FuncError> {
    if args.len() != n {
        return Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        )
        .into());
    }
    Ok(())
}

fn string<'a>(name: &str, v: &'a Value) -> Result<&'a str, FuncError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("{name}: expected string; got {}", type_name(other)).into()),
    }
}

/// Calls a built-in other than `and` and `or` (the evaluator short-circuits those itself).
pub(crate) fn call_builtin(name: &str, args: Vec<Value>) -> Result<Value, FuncError> {
    match name {
        "and" | "or" => {
            if args.is_empty() {
                return Err(
                    format!("wrong number of args for {name}: want at least 1 got 0").into(),
                );
            }
            let stop_on = name == "or";
            let last = args.len() - 1;
            let pick = args
                .iter()
                .position(|a| truthy(a) == stop_on)
                .unwrap_or(last);
            Ok(args[pick].clone())
        }
        "not" => {
            want(name, &args, 1)?;
            Ok(Value::Bool(!truthy(&args[0])))
        }
        "eq" => {
            if args.len() < 2 {
                return Err("missing argument for comparison".into());
            }
            for b in &args[1..] {
                if compare(&args[0], b)? == Some(Ordering::Equal) {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            want(name, &args, 2)?;
            let ord = compare(&args[0], &args[1])?;
            if name == "ne" {
                return Ok(Value::Bool(ord != Some(Ordering::Equal)));
            }
            let ord = match ord {
                Some(o) if !matches!(args[0], Value::Bool(_) | Value::Null) => o,
                _ => return Err(format!("invalid type for comparison in {name}").into()),
            };
            Ok(Value::Bool(match name {
                "lt" => ord == Ordering::Less,
                "le" => ord != Ordering::Greater,
                "gt" => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }))
        }
        "len" => {
            want(name, &args, 1)?;
            let n = match &args[0] {
                Value::String(s) => s.len(),
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                other => return Err(format!("len of type {}", type_name(other)).into()),
            };
            int_value(n as i128)
        }
        "index" => index(args),
        "print" => Ok(Value::String(sprint(&args))),
        "println" => {
            let items: Vec<String> = args.iter().map(fmt_v).collect();
            Ok(Value::String(format!("{}\n", items.join(" "))))
        }
        "printf" => {
            let Some((fmt, rest)) = args.split_first() else {
                return Err("wrong number of args for printf: want at least 1 got 0".into());
            };
            Ok(Value::String(sprintf(string(name, fmt)?, rest)))
        }
        "contains" => {
            want(name, &args, 2)?;
            in_list(&args[1], &args[0]).map(Value::Bool)
        }
        "in" => {
            want(name, &args, 2)?;
            in_list(&args[0], &args[1]).map(Value::Bool)
        }
        "join" => {
            want(name, &args, 2)?;
            let sep = string(name, &args[0])?;
            let Value::Array(items) = &args[1] else {
                return Err(format!("join: expected a list; got {}", type_name(&args[1])).into());
            };
            let parts: Vec<String> = items.iter().map(fmt_v).collect();
            Ok(Value::String(parts.join(sep)))
        }
        "split" => {
            want(name, &args, 2)?;
            let sep = string(name, &args[0])?;
            let s = string(name, &args[1])?.trim();
            // consul-template: an empty string splits into no parts, not one empty part.
            if s.is_empty() {
                return Ok(Value::Array(vec![]));
            }
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| Value::String(c.to_string())).collect()
            } else {
                s.split(sep).map(|p| Value::String(p.to_string())).collect()
            };
            Ok(Value::Array(parts))
        }
        "toJSON" | "toJSONPretty" => {
            want(name, &args, 1)?;
            let text = if name == "toJSON" {
                serde_json::to_string(&args[0])
            } else {
                serde_json::to_string_pretty(&args[0])
            }
            .map_err(|e| format!("{name}: {e}"))?;
            Ok(Value::String(go_json_escape(&text)))
        }
        "parseJSON" => {
            want(name, &args, 1)?;
            let s = string(name, &args[0])?;
            if s.trim().is_empty() {
                return Ok(Value::Object(Map::new()));
            }
            serde_json::from_str(s).map_err(|e| format!("parseJSON: {e}").into())
        }
        "toLower" | "toUpper" | "toTitle" | "trimSpace" => {
            want(name, &args, 1)?;
            let s = string(name, &args[0])?;
            Ok(Value::String(match name {
                "toLower" => s.to_lowercase(),
                "toUpper" => s.to_uppercase(),
                "toTitle" => title(s),
                _ => s.trim().to_string(),
            }))
        }
        "replaceAll" => {
            want(name, &args, 3)?;
            let (from, to, s) = (
                string(name, &args[0])?,
                string(name, &args[1])?,
                string(name, &args[2])?,
            );
            Ok(Value::String(s.replace(from, to)))
        }
        "regexMatch" => {
            want(name, &args, 2)?;
            let re = regex(string(name, &args[0])?)?;
            Ok(Value::Bool(re.is_match(string(name, &args[1])?)))
        }
        "regexReplaceAll" => {
            want(name, &args, 3)?;
            let re = regex(string(name, &args[0])?)?;
            let (repl, s) = (string(name, &args[1])?, string(name, &args[2])?);
            Ok(Value::String(re.replace_all(s, repl).into_owned()))
        }
        "timestamp" => timestamp(&args),
        "add" | "subtract" | "multiply" | "divide" | "modulo" => {
            want(name, &args, 2)?;
            // consul-template's order: `add b a` is a + b, so `{{ x | subtract 1 }}` is x - 1.
            arith(name, num(&args[1], name)?, num(&args[0], name)?)
        }
        "byTag" => {
            want(name, &args, 1)?;
            by_tag(&args[0])
        }
        other => Err(format!("function \"{other}\" not defined").into()),
    }
}

/// Equality and order of two values; `None` when they are comparable only for equality.
fn compare(a: &Value, b: &Value) -> Result<Option<Ordering>, FuncError> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => {
            let (x, y) = (num(a, "compare")?, num(b, "compare")?);
            Ok(match (x, y) {
                (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
                _ => as_f64(x).partial_cmp(&as_f64(y)),
            })
        }
        (Value::String(x), Value::String(y)) => Ok(Some(x.cmp(y))),
        (Value::Bool(x), Value::Bool(y)) => Ok(Some(if x == y {
            Ordering::Equal
        } else {
            Ordering::Less
        })),
        (Value::Null, Value::Null) => Ok(Some(Ordering::Equal)),
        // Go: a nil operand is simply unequal to anything else (`eq .Missing "x"` is false), and
        // not ordered (lt and friends reject it).
        (Value::Null, _) | (_, Value::Null) => Ok(None),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => {
            Err("non-comparable type".into())
        }
        _ => Err(format!(
            "incompatible types for comparison: {} and {}",
            type_name(a),
            type_name(b)
        )
        .into()),
    }
}

fn index(args: Vec<Value>) -> Result<Value, FuncError> {
    let mut it = args.into_iter();
    let Some(mut cur) = it.next() else {
        return Err("wrong number of args for index: want at least 1 got 0".into());
    };
    for key in it {
        cur = match (&cur, &key) {
            (Value::Array(a), Value::Number(_)) => {
                let i = match num(&key, "index")? {
                    Num::Int(i) => i,
                    Num::Float(_) => {
                        return Err("cannot index slice/array with type float64".into())
                    }
                };
                usize::try_from(i)
                    .ok()
                    .and_then(|i| a.get(i))
                    .cloned()
                    .ok_or_else(|| format!("error calling index: index out of range: {i}"))?
            }
            (Value::String(s), Value::Number(_)) => {
                let i = match num(&key, "index")? {
                    Num::Int(i) => i,
                    Num::Float(_) => return Err("cannot index string with type float64".into()),
                };
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| s.as_bytes().get(i))
                    .ok_or_else(|| format!("error calling index: index out of range: {i}"))?;
                Value::from(*b)
            }
            (Value::Object(o), Value::String(k)) => o.get(k).cloned().unwrap_or(Value::Null),
            (Value::Null, _) => return Err("index of untyped nil".into()),
            (c, k) => {
                return Err(format!(
                    "can't index item of type {} with {}",
                    type_name(c),
                    type_name(k)
                )
                .into())
            }
        };
    }
    Ok(cur)
}

/// consul-template's `in`: whether `v` is an element of the list, or a substring of the string.
fn in_list(list: &Value, v: &Value) -> Result<bool, FuncError> {
    match list {
        Value::Array(items) => Ok(items.iter().any(|i| i == v || same_number(i, v))),
        Value::String(s) => match v {
            Value::String(needle) => Ok(s.contains(needle.as_str())),
            other => Ok(s.contains(&fmt_v(other))),
        },
        Value::Null => Ok(false),
        other => Err(format!("in: cannot search in type {}", type_name(other)).into()),
    }
}

fn same_number(a: &Value, b: &Value) -> bool {
    matches!((a, b), (Value::Number(_), Value::Number(_)))
        && compare(a, b).ok().flatten() == Some(Ordering::Equal)
}

/// Go's Sprint: spaces between operands when neither side is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !a.is_string() && !args[i - 1].is_string() {
            out.push(' ');
        }
        out.push_str(&fmt_v(a));
    }
    out
}

/// Go's Sprintf for %s %d %v %q %f %x %t %%, with flags `-` and `0`, width and precision.
fn sprintf(fmt: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut next = 0;
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero) = (false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' | ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(*d);
            chars.next();
        }
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(*d);
                chars.next();
            }
            prec = Some(p.parse().unwrap_or(0).min(100));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        let bad = || format!("%!{verb}({}={})", type_name(arg), fmt_v(arg));
        let text = match (verb, arg) {
            ('v', _) => fmt_v(arg),
            ('s', Value::String(s)) => match prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('s', Value::Array(_) | Value::Object(_)) => fmt_v(arg),
            ('q', Value::String(s)) => go_quote(s),
            ('t', Value::Bool(b)) => b.to_string(),
            ('d', Value::Number(n)) if !n.is_f64() => fmt_number(n),
            ('x', Value::Number(n)) if !n.is_f64() => match n.as_i64() {
                Some(i) if i < 0 => format!("-{:x}", i.unsigned_abs()),
                Some(i) => format!("{i:x}"),
                None => format!("{:x}", n.as_u64().unwrap_or(0)),
            },
            ('x', Value::String(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('f' | 'F', Value::Number(n)) if n.is_f64() => {
                format!("{:.*}", prec.unwrap_or(6), n.as_f64().unwrap_or(0.0))
            }
            _ => bad(),
        };
        let width: usize = width.parse().unwrap_or(0).min(1000);
        let len = text.chars().count();
        if len >= width {
            out.push_str(&text);
        } else if left {
            out.push_str(&text);
            out.push_str(&" ".repeat(width - len));
        } else if zero && matches!(verb, 'd' | 'f' | 'F' | 'x') {
            let (sign, digits) = match text.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("", text.as_str()),
            };
            out.push_str(sign);
            out.push_str(&"0".repeat(width - len));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(width - len));
            out.push_str(&text);
        }
    }
    for extra in &args[next.min(args.len())..] {
        out.push_str(&format!("%!(EXTRA {}={})", type_name(extra), fmt_v(extra)));
    }
    out
}

/// Go's strconv.Quote (printable Unicode kept as is).
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's json.Marshal escapes `<`, `>`, `&`, U+2028 and U+2029; they only occur inside strings.
fn go_json_escape(s: &str) -> String {
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Go's strings.Title: upper-case the first letter of each word.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = !(c.is_alphanumeric() || c == '_' || c == '\'');
    }
    out
}

fn regex(re: &str) -> Result<regex::Regex, FuncError> {
    regex::Regex::new(re).map_err(|e| format!("invalid regular expression: {e}").into())
}

fn timestamp(args: &[Value]) -> Result<Value, FuncError> {
    let now = crate::util::time::now_ns();
    match args {
        [] => {
            // rfc3339_ns gives milliseconds; Go's time.RFC3339 has whole seconds.
            let full = crate::util::time::rfc3339_ns(now);
            Ok(Value::String(format!("{}Z", &full[..19])))
        }
        [Value::String(f)] if f == "unix" => {
            Ok(Value::String(now.div_euclid(1_000_000_000).to_string()))
        }
        [_] => Err("timestamp: only no argument (RFC 3339) and \"unix\" are supported".into()),
        _ => Err(format!(
            "wrong number of args for timestamp: want 0 or 1 got {}",
            args.len()
        )
        .into()),
    }
}

/// `a op b` with integers kept integers (checked), floats otherwise.
fn arith(name: &str, a: Num, b: Num) -> Result<Value, FuncError> {
    if let (Num::Int(x), Num::Int(y)) = (a, b) {
        let r = match name {
            "add" => x.checked_add(y),
            "subtract" => x.checked_sub(y),
            "multiply" => x.checked_mul(y),
            "divide" | "modulo" if y == 0 => return Err(format!("{name}: division by zero").into()),
            "divide" => x.checked_div(y),
            _ => x.checked_rem(y),
        };
        return int_value(r.ok_or("integer overflow")?);
    }
    let (x, y) = (as_f64(a), as_f64(b));
    match name {
        "add" => float_value(x + y),
        "subtract" => float_value(x - y),
        "multiply" => float_value(x * y),
        "divide" if y == 0.0 => Err("divide: division by zero".into()),
        "divide" => float_value(x / y),
        _ => Err("modulo: only integers are supported".into()),
    }
}

/// consul-template's byTag: tag -> the services carrying it, tags sorted, services in order.
fn by_tag(list: &Value) -> Result<Value, FuncError> {
    let Value::Array(services) = list else {
        return Err(format!(
            "byTag: expected a list of services; got {}",
            type_name(list)
        )
        .into());
    };
    let mut out: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for s in services {
        let tags = match s.get("Tags") {
            Some(Value::Array(t)) => t,
            Some(Value::Null) | None => continue,
            Some(other) => {
                return Err(format!("byTag: Tags is a {}, not a list", type_name(other)).into())
            }
        };
        let mut seen = std::collections::HashSet::new();
        for t in tags {
            let t = match t {
                Value::String(t) => t.clone(),
                other => fmt_v(other),
            };
            if seen.insert(t.clone()) {
                out.entry(t).or_default().push(s.clone());
            }
        }
    }
    Ok(Value::Object(
        out.into_iter().map(|(k, v)| (k, Value::Array(v))).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_go() {
        assert_eq!(fmt_float(3.0), "3");
        assert_eq!(fmt_float(3.5), "3.5");
        assert_eq!(fmt_float(1e21), "1e+21");
        assert_eq!(fmt_float(123456.0), "123456");
        assert_eq!(fmt_float(1234567.0), "1.234567e+06");
        assert_eq!(fmt_float(0.0001), "0.0001");
        assert_eq!(fmt_float(0.00001), "1e-05");
    }

    #[test]
    fn values_print_like_go() {
        assert_eq!(fmt_v(&json!(["a", 1, null])), "[a 1 <nil>]");
        assert_eq!(fmt_v(&json!({"b": 2, "a": [true]})), "map[a:[true] b:2]");
        assert_eq!(print_top(&Value::Null), "<no value>");
    }

    #[test]
    fn printf_verbs() {
        let f = |fmt: &str, args: Value| sprintf(fmt, args.as_array().unwrap());
        assert_eq!(f("%s:%d", json!(["h", 80])), "h:80");
        assert_eq!(f("%v %q %%", json!([[1, 2], "a\"b"])), "[1 2] \"a\\\"b\" %");
        assert_eq!(
            f("%.2f|%5d|%-3s|%05d", json!([1.5, 42, "x", -7])),
            "1.50|   42|x  |-0007"
        );
        assert_eq!(f("%d %s", json!(["x"])), "%!d(string=x) %!s(MISSING)");
        assert_eq!(f("a", json!([1])), "a%!(EXTRA int=1)");
    }

    #[test]
    fn title_and_json() {
        assert_eq!(title("hello wide-world"), "Hello Wide-World");
        assert_eq!(
            go_json_escape(r#"{"a":"<&>"}"#),
            r#"{"a":"\u003c\u0026\u003e"}"#
        );
    }
}
