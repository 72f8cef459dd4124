//! Execution of a parsed template, and the static dependency discovery (`literal_calls`).
//!
//! Variables live on one stack; every block and every range iteration truncates it back to its
//! mark on exit, which gives Go's scoping (a variable lives until the `{{end}}` of the block that
//! declared it) while `$x = v` still reaches an outer variable.

use serde_json::Value;

use super::funcs::{call_builtin, is_builtin, print_top, truthy};
use super::parser::{Arg, Cmd, Node, Pipe, Template};
use super::{DataSource, TemplateError};

static NULL: Value = Value::Null;

impl Template {
    /// The name given to `parse`, used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders the template with `dot` as `.` and `$`, calling `data` for Consul lookups.
    pub fn execute(&self, dot: &Value, data: &mut dyn DataSource) -> Result<String, TemplateError> {
        let mut ex = Exec {
            name: &self.name,
            data,
            vars: vec![(String::new(), dot.clone())],
            out: String::new(),
        };
        ex.list(&self.root, dot)?;
        Ok(ex.out)
    }

    /// Every data-function call with only literal arguments, in order, deduplicated: (name,
    /// args). The caller sets up one watch per dependency from this before the first render
    /// (consul-template's dependency discovery). Calls whose arguments are computed are left out:
    /// they are only known when the template runs.
    pub fn literal_calls(&self) -> Vec<(String, Vec<Value>)> {
        let mut out = Vec::new();
        calls_in_nodes(&self.root, &mut out);
        out
    }
}

fn calls_in_nodes(nodes: &[Node], out: &mut Vec<(String, Vec<Value>)>) {
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Action(p) => calls_in_pipe(p, out),
            Node::If {
                branches,
                otherwise,
            } => {
                for (cond, body) in branches {
                    calls_in_pipe(cond, out);
                    calls_in_nodes(body, out);
                }
                if let Some(o) = otherwise {
                    calls_in_nodes(o, out);
                }
            }
            Node::Range {
                pipe,
                body,
                otherwise,
            }
            | Node::With {
                pipe,
                body,
                otherwise,
            } => {
                calls_in_pipe(pipe, out);
                calls_in_nodes(body, out);
                if let Some(o) = otherwise {
                    calls_in_nodes(o, out);
                }
            }
        }
    }
}

fn calls_in_pipe(p: &Pipe, out: &mut Vec<(String, Vec<Value>)>) {
    let mut add = |name: &str, args: Vec<Value>| {
        let call = (name.to_string(), args);
        if !out.contains(&call) {
            out.push(call);
        }
    };
    let mut nested = Vec::new();
    for (stage, cmd) in p.cmds.iter().enumerate() {
        let (first, rest) = match cmd.args.split_first() {
            Some(x) => x,
            None => continue,
        };
        if let Arg::Func(name) = first {
            // A later stage also gets the previous stage's value, so it is never all-literal.
            if !is_builtin(name) && stage == 0 {
                let lits: Option<Vec<Value>> = rest
                    .iter()
                    .map(|a| match a {
                        Arg::Lit(v) => Some(v.clone()),
                        Arg::Nil => Some(Value::Null),
                        _ => None,
                    })
                    .collect();
                if let Some(lits) = lits {
                    add(name, lits);
                }
            }
        }
        for (i, a) in cmd.args.iter().enumerate() {
            match a {
                // A bare function name as an argument is a call with no arguments.
                Arg::Func(name) if i > 0 && !is_builtin(name) => add(name, vec![]),
                Arg::Sub(sub, _) => nested.push(sub),
                _ => {}
            }
        }
    }
    for sub in nested {
        calls_in_pipe(sub, out);
    }
}

struct Exec<'a> {
    name: &'a str,
    data: &'a mut dyn DataSource,
    /// (name without `$`, value); `$` itself is the empty name at the bottom.
    vars: Vec<(String, Value)>,
    out: String,
}

impl Exec<'_> {
    fn err(&self, line: usize, reason: impl Into<String>) -> TemplateError {
        TemplateError::Exec {
            name: self.name.to_string(),
            line,
            reason: reason.into(),
        }
    }

    fn list(&mut self, nodes: &[Node], dot: &Value) -> Result<(), TemplateError> {
        let mark = self.vars.len();
        let mut result = Ok(());
        for n in nodes {
            result = self.node(n, dot);
            if result.is_err() {
                break;
            }
        }
        self.vars.truncate(mark);
        result
    }

    fn node(&mut self, node: &Node, dot: &Value) -> Result<(), TemplateError> {
        match node {
            Node::Text(s) => self.out.push_str(s),
            Node::Action(p) => {
                let v = self.pipe(p, dot)?;
                if p.decl.is_empty() {
                    self.out.push_str(&print_top(&v));
                }
            }
            Node::If {
                branches,
                otherwise,
            } => {
                let mark = self.vars.len();
                let mut r = Ok(());
                let mut taken = false;
                for (cond, body) in branches {
                    match self.pipe(cond, dot) {
                        Ok(v) if truthy(&v) => {
                            r = self.list(body, dot);
                            taken = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            r = Err(e);
                            taken = true;
                            break;
                        }
                    }
                }
                if !taken {
                    if let Some(o) = otherwise {
                        r = self.list(o, dot);
                    }
                }
                self.vars.truncate(mark);
                r?;
            }
            Node::With {
                pipe,
                body,
                otherwise,
            } => {
                let mark = self.vars.len();
                let r = match self.pipe(pipe, dot) {
                    Ok(v) if truthy(&v) => self.list(body, &v),
                    Ok(_) => match otherwise {
                        Some(o) => self.list(o, dot),
                        None => Ok(()),
                    },
                    Err(e) => Err(e),
                };
                self.vars.truncate(mark);
                r?;
            }
            Node::Range {
                pipe,
                body,
                otherwise,
            } => {
                let mark = self.vars.len();
                let r = self.range(pipe, body, otherwise.as_deref(), dot);
                self.vars.truncate(mark);
                r?;
            }
        }
        Ok(())
    }

    fn range(
        &mut self,
        pipe: &Pipe,
        body: &[Node],
        otherwise: Option<&[Node]>,
        dot: &Value,
    ) -> Result<(), TemplateError> {
        let v = self.pipe_value(pipe, dot)?;
        let items: Vec<(Value, Value)> = match v {
            Value::Null => vec![],
            Value::Array(a) => a
                .into_iter()
                .enumerate()
                .map(|(i, e)| (Value::from(i), e))
                .collect(),
            Value::Object(o) => {
                let mut kv: Vec<(String, Value)> = o.into_iter().collect();
                kv.sort_by(|a, b| a.0.cmp(&b.0));
                kv.into_iter().map(|(k, e)| (Value::String(k), e)).collect()
            }
            other => {
                return Err(self.err(
                    pipe.line,
                    format!("range can't iterate over {}", print_top(&other)),
                ))
            }
        };
        if items.is_empty() {
            return match otherwise {
                Some(o) => self.list(o, dot),
                None => Ok(()),
            };
        }
        let mark = self.vars.len();
        for (key, elem) in items {
            self.vars.truncate(mark);
            match pipe.decl.as_slice() {
                [e] => self.vars.push((e.clone(), elem.clone())),
                [k, e] => {
                    self.vars.push((k.clone(), key));
                    self.vars.push((e.clone(), elem.clone()));
                }
                _ => {}
            }
            self.list(body, &elem)?;
        }
        Ok(())
    }

    /// A pipeline's value, with its declaration or assignment applied.
    fn pipe(&mut self, p: &Pipe, dot: &Value) -> Result<Value, TemplateError> {
        let v = self.pipe_value(p, dot)?;
        if p.assign {
            let name = &p.decl[0];
            match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = v.clone(),
                None => return Err(self.err(p.line, format!("undefined variable: ${name}"))),
            }
        } else {
            for d in &p.decl {
                self.vars.push((d.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn pipe_value(&mut self, p: &Pipe, dot: &Value) -> Result<Value, TemplateError> {
        let mut prev = None;
        for cmd in &p.cmds {
            prev = Some(self.cmd(cmd, dot, prev)?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    fn cmd(&mut self, cmd: &Cmd, dot: &Value, prev: Option<Value>) -> Result<Value, TemplateError> {
        match cmd.args.split_first() {
            Some((Arg::Func(name), rest)) => self.call(name, rest, prev, dot, cmd.line),
            Some((a, [])) if prev.is_none() => self.arg(a, dot, cmd.line),
            _ => Err(self.err(cmd.line, "can't give argument to non-function")),
        }
    }

    fn call(
        &mut self,
        name: &str,
        args: &[Arg],
        prev: Option<Value>,
        dot: &Value,
        line: usize,
    ) -> Result<Value, TemplateError> {
        if name == "and" || name == "or" {
            // Go evaluates `and`/`or` arguments lazily: `and .A .A.B` must not fail when .A is
            // missing.
            let n = args.len() + usize::from(prev.is_some());
            if n == 0 {
                return Err(self.err(
                    line,
                    format!("wrong number of args for {name}: want at least 1 got 0"),
                ));
            }
            let stop_on = name == "or";
            let mut last = Value::Null;
            for a in args {
                last = self.arg(a, dot, line)?;
                if truthy(&last) == stop_on {
                    return Ok(last);
                }
            }
            return Ok(prev.unwrap_or(last));
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.arg(a, dot, line)?);
        }
        vals.extend(prev);
        if is_builtin(name) {
            return call_builtin(name, vals).map_err(|e| self.err(line, e.to_string()));
        }
        match self.data.call(name, &vals) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(self.err(line, format!("function \"{name}\" not defined"))),
            Err(e) => Err(self.err(line, format!("error calling {name}: {e}"))),
        }
    }

    fn arg(&mut self, a: &Arg, dot: &Value, line: usize) -> Result<Value, TemplateError> {
        match a {
            Arg::Func(name) => self.call(name, &[], None, dot, line),
            Arg::Field(fields) => self.walk(dot, fields, line),
            Arg::Var(name, fields) => {
                let Some(pos) = self.vars.iter().rposition(|(n, _)| n == name) else {
                    return Err(self.err(line, format!("undefined variable: ${name}")));
                };
                self.walk(&self.vars[pos].1, fields, line)
            }
            Arg::Dot => Ok(dot.clone()),
            Arg::Lit(v) => Ok(v.clone()),
            Arg::Nil => Ok(Value::Null),
            Arg::Sub(p, fields) => {
                let v = self.pipe(p, dot)?;
                self.walk(&v, fields, line)
            }
        }
    }

    /// Field access: a missing key is nil (Go's missingkey=default, printed `<no value>`); a
    /// field of nil or of a non-object is an error.
    fn walk(&self, start: &Value, fields: &[String], line: usize) -> Result<Value, TemplateError> {
        let mut cur = start;
        for f in fields {
            cur = match cur {
                Value::Object(o) => o.get(f).unwrap_or(&NULL),
                Value::Null => {
                    return Err(self.err(line, format!("nil pointer evaluating <no value>.{f}")))
                }
                Value::Array(_) => {
                    return Err(self.err(line, format!("can't evaluate field {f} in type list")))
                }
                other => {
                    let t = match other {
                        Value::String(_) => "string",
                        Value::Number(_) => "number",
                        _ => "bool",
                    };
                    return Err(self.err(line, format!("can't evaluate field {f} in type {t}")));
                }
            };
        }
        Ok(cur.clone())
    }
}
