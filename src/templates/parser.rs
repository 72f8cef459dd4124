//! The AST and the recursive-descent parser.
//!
//! Everything Go's parser rejects statically is rejected here with its line: unknown functions,
//! undefined variables, unbalanced `{{end}}`/`{{else}}`, non-executable pipeline stages. The
//! evaluator can then assume a well-formed tree.

use std::collections::HashSet;

use serde_json::Value;

use super::funcs::BUILTINS;
use super::lexer::{lex, Kind, Token};
use super::TemplateError;

/// Nesting limit for blocks and parentheses: deeper input is refused rather than risking the
/// stack on hostile text.
const MAX_DEPTH: usize = 100;

/// A parsed template: parse once, execute many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub(crate) name: String,
    pub(crate) root: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Text(String),
    Action(Pipe),
    /// `if` with its `else if` branches flattened; variables declared in a condition stay visible
    /// in later branches, as Go's nested-if reading of `else if` gives.
    If {
        branches: Vec<(Pipe, Vec<Node>)>,
        otherwise: Option<Vec<Node>>,
    },
    Range {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Option<Vec<Node>>,
    },
    With {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Option<Vec<Node>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pipe {
    pub line: usize,
    /// Declared or assigned variable names (without `$`).
    pub decl: Vec<String>,
    /// `$x = ...` rather than `$x := ...`.
    pub assign: bool,
    pub cmds: Vec<Cmd>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cmd {
    pub line: usize,
    /// A function call when the first operand is `Func`, otherwise a single value.
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Func(String),
    /// `.A.B` on dot.
    Field(Vec<String>),
    /// `$x.A.B`; `$` is the empty name.
    Var(String, Vec<String>),
    Dot,
    Lit(Value),
    Nil,
    /// `(pipeline).A.B`
    Sub(Box<Pipe>, Vec<String>),
}

pub(crate) fn parse(
    name: &str,
    text: &str,
    data_funcs: &[&str],
) -> Result<Template, TemplateError> {
    let mut funcs: HashSet<String> = BUILTINS.iter().map(|s| s.to_string()).collect();
    funcs.extend(data_funcs.iter().map(|s| s.to_string()));
    let mut p = Parser {
        name,
        toks: lex(text),
        pos: 0,
        funcs,
        vars: vec![String::new()],
        depth: 0,
    };
    let (root, stop) = p.list()?;
    match stop {
        Stop::Eof => Ok(Template {
            name: name.to_string(),
            root,
        }),
        Stop::End(line) => Err(p.err(line, "unexpected {{end}}")),
        Stop::Else(line) => Err(p.err(line, "unexpected {{else}}")),
    }
}

/// What ended a list of nodes.
enum Stop {
    Eof,
    End(usize),
    /// Positioned just after the `else` word, inside the action.
    Else(usize),
}

struct Parser<'a> {
    name: &'a str,
    toks: Vec<Token>,
    pos: usize,
    funcs: HashSet<String>,
    /// Variables in scope, innermost last.
    vars: Vec<String>,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, line: usize, reason: impl Into<String>) -> TemplateError {
        TemplateError::Parse {
            name: self.name.to_string(),
            line,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> &Token {
        // The stream always ends with Eof or Error, and we never step past it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if !matches!(t.kind, Kind::Eof | Kind::Error(_)) {
            self.pos += 1;
        }
        t
    }

    /// Turns a lexing error token into the parse error it stands for.
    fn lex_err(&self, t: &Token) -> Option<TemplateError> {
        match &t.kind {
            Kind::Error(e) => Some(self.err(t.line, e.to_string())),
            _ => None,
        }
    }

    fn expect_close(&mut self, what: &str) -> Result<(), TemplateError> {
        let t = self.next();
        match t.kind {
            Kind::Close => Ok(()),
            _ => Err(self.lex_err(&t).unwrap_or_else(|| {
                self.err(
                    t.line,
                    format!("unexpected {} in {what}", describe(&t.kind)),
                )
            })),
        }
    }

    fn enter(&mut self, line: usize) -> Result<(), TemplateError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(line, "template nested too deeply"));
        }
        Ok(())
    }

    /// A list of nodes up to `{{end}}`, `{{else ...` or the end of the text. Variables declared
    /// in the list are scoped to it.
    fn list(&mut self) -> Result<(Vec<Node>, Stop), TemplateError> {
        let mark = self.vars.len();
        let mut nodes = Vec::new();
        let stop = loop {
            let t = self.next();
            match t.kind {
                Kind::Eof => break Stop::Eof,
                Kind::Error(_) => return Err(self.lex_err(&t).expect("error token")),
                Kind::Text(s) => nodes.push(Node::Text(s)),
                Kind::Open => {
                    let k = self.peek().clone();
                    match &k.kind {
                        Kind::Ident(w) if w == "end" => {
                            self.next();
                            self.expect_close("end")?;
                            break Stop::End(k.line);
                        }
                        Kind::Ident(w) if w == "else" => {
                            self.next();
                            break Stop::Else(k.line);
                        }
                        Kind::Ident(w) if matches!(w.as_str(), "if" | "range" | "with") => {
                            let w = w.clone();
                            self.next();
                            nodes.push(self.control(&w, k.line)?);
                        }
                        Kind::Ident(w)
                            if matches!(
                                w.as_str(),
                                "define" | "template" | "block" | "break" | "continue"
                            ) =>
                        {
                            return Err(self.err(k.line, format!("{{{{{w}}}}} is not supported")));
                        }
                        _ => {
                            let pipe = self.pipeline("command", false)?;
                            self.expect_close("command")?;
                            nodes.push(Node::Action(pipe));
                        }
                    }
                }
                other => {
                    return Err(self.err(t.line, format!("unexpected {}", describe(&other))));
                }
            }
        };
        self.vars.truncate(mark);
        Ok((nodes, stop))
    }

    /// After `{{if`, `{{range` or `{{with`: the whole block through its `{{end}}`.
    fn control(&mut self, word: &str, line: usize) -> Result<Node, TemplateError> {
        self.enter(line)?;
        let mark = self.vars.len();
        let pipe = self.pipeline(word, word == "range")?;
        self.expect_close(word)?;
        let missing_end = |p: &Self| p.err(line, format!("missing {{{{end}}}} for {{{{{word}}}}}"));
        let mut branches = vec![];
        let mut current = pipe;
        let (body, otherwise) = loop {
            let (body, stop) = self.list()?;
            match stop {
                Stop::Eof => return Err(missing_end(self)),
                Stop::End(_) => break (body, None),
                Stop::Else(else_line) => {
                    let t = self.peek().clone();
                    match &t.kind {
                        Kind::Ident(w) if w == "if" && word == "if" => {
                            self.next();
                            let cond = self.pipeline("if", false)?;
                            self.expect_close("else if")?;
                            branches.push((std::mem::replace(&mut current, cond), body));
                        }
                        // Go 1.23's `{{with a}}..{{else with b}}..{{end}}` reads as a `with`
                        // nested in the else branch that shares the outer `{{end}}`.
                        Kind::Ident(w) if w == "with" && word == "with" => {
                            self.next();
                            let inner = self.control("with", else_line)?;
                            break (body, Some(vec![inner]));
                        }
                        Kind::Close => {
                            self.next();
                            let (other, stop) = self.list()?;
                            match stop {
                                Stop::End(_) => break (body, Some(other)),
                                Stop::Eof => return Err(missing_end(self)),
                                Stop::Else(l) => {
                                    let reason = format!(
                                        "expected end; found {{{{else}}}} \
                                         (in {{{{{word}}}}} at line {line})"
                                    );
                                    return Err(self.err(l, reason));
                                }
                            }
                        }
                        _ => {
                            return Err(self.lex_err(&t).unwrap_or_else(|| {
                                self.err(
                                    else_line,
                                    format!(
                                        "unexpected {} after {{{{else}}}} in {{{{{word}}}}}",
                                        describe(&t.kind)
                                    ),
                                )
                            }))
                        }
                    }
                }
            }
        };
        self.vars.truncate(mark);
        self.depth -= 1;
        Ok(match word {
            "if" => {
                branches.push((current, body));
                Node::If {
                    branches,
                    otherwise,
                }
            }
            "range" => Node::Range {
                pipe: current,
                body,
                otherwise,
            },
            _ => Node::With {
                pipe: current,
                body,
                otherwise,
            },
        })
    }

    /// A pipeline up to (not including) `}}` or `)`, with an optional declaration.
    fn pipeline(&mut self, ctx: &str, range: bool) -> Result<Pipe, TemplateError> {
        let line = self.peek().line;
        let mut decl = Vec::new();
        let mut assign = false;
        // Declarations: `$x :=`, `$x =`, and in range `$i, $e :=`.
        if let Kind::Var(v) = &self.peek().kind {
            let v = v.clone();
            let after = self.toks.get(self.pos + 1).map(|t| t.kind.clone());
            match after {
                Some(Kind::Declare) | Some(Kind::Assign) => {
                    assign = after == Some(Kind::Assign);
                    self.pos += 2;
                    decl.push(v);
                }
                Some(Kind::Comma) if range => {
                    let second = self.toks.get(self.pos + 2).map(|t| t.kind.clone());
                    let op = self.toks.get(self.pos + 3).map(|t| t.kind.clone());
                    match (second, op) {
                        (Some(Kind::Var(w)), Some(Kind::Declare)) => {
                            self.pos += 4;
                            decl.push(v);
                            decl.push(w);
                        }
                        _ => {
                            return Err(
                                self.err(line, "range can only initialize variables as $i, $e :=")
                            )
                        }
                    }
                }
                _ => {}
            }
        }
        if assign {
            if let Some(v) = decl.first() {
                if !self.vars.contains(v) {
                    return Err(self.err(line, format!("undefined variable \"${v}\"")));
                }
            }
        }
        let mut cmds: Vec<Cmd> = Vec::new();
        loop {
            let t = self.peek().clone();
            match &t.kind {
                Kind::Close | Kind::RParen => {
                    if cmds.is_empty() {
                        return Err(self.err(t.line, format!("missing value for {ctx}")));
                    }
                    break;
                }
                Kind::Pipe if !cmds.is_empty() => {
                    self.next();
                    let c = self.command()?;
                    if !matches!(c.args.first(), Some(Arg::Func(_))) {
                        return Err(self.err(
                            c.line,
                            format!(
                                "non executable command in pipeline stage {}",
                                cmds.len() + 1
                            ),
                        ));
                    }
                    cmds.push(c);
                }
                Kind::Pipe => return Err(self.err(t.line, "missing value for command")),
                _ if cmds.is_empty() => cmds.push(self.command()?),
                other => {
                    return Err(self.lex_err(&t).unwrap_or_else(|| {
                        self.err(t.line, format!("unexpected {} in {ctx}", describe(other)))
                    }))
                }
            }
        }
        if !assign {
            self.vars.extend(decl.iter().cloned());
        }
        Ok(Pipe {
            line,
            decl,
            assign,
            cmds,
        })
    }

    /// Operands up to `|`, `}}` or `)`.
    fn command(&mut self) -> Result<Cmd, TemplateError> {
        let line = self.peek().line;
        let mut args = Vec::new();
        loop {
            let t = self.peek().clone();
            match &t.kind {
                Kind::Pipe | Kind::Close | Kind::RParen => break,
                Kind::Eof => return Err(self.err(t.line, "unclosed action")),
                Kind::Error(_) => return Err(self.lex_err(&t).expect("error token")),
                _ => {}
            }
            if !args.is_empty() && !t.spaced {
                return Err(self.err(
                    t.line,
                    format!("missing space before {}", describe(&t.kind)),
                ));
            }
            args.push(self.operand()?);
        }
        match args.first() {
            None => return Err(self.err(line, "missing value for command")),
            Some(Arg::Nil) => return Err(self.err(line, "nil is not a command")),
            Some(Arg::Func(_)) => {}
            Some(_) if args.len() > 1 => {
                return Err(self.err(line, "can't give argument to non-function"))
            }
            Some(_) => {}
        }
        Ok(Cmd { line, args })
    }

    /// `.A.B` fields directly attached to the previous operand.
    fn chain(&mut self) -> Vec<String> {
        let mut fields = Vec::new();
        while let Token {
            kind: Kind::Field(f),
            spaced: false,
            ..
        } = self.peek()
        {
            fields.push(f.clone());
            self.pos += 1;
        }
        fields
    }

    fn operand(&mut self) -> Result<Arg, TemplateError> {
        let t = self.next();
        let arg = match t.kind {
            Kind::Ident(w) => match w.as_str() {
                "true" => Arg::Lit(Value::Bool(true)),
                "false" => Arg::Lit(Value::Bool(false)),
                "nil" => Arg::Nil,
                _ if self.funcs.contains(&w) => Arg::Func(w),
                "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block"
                | "break" | "continue" => {
                    return Err(self.err(t.line, format!("unexpected <{w}> in command")))
                }
                _ => return Err(self.err(t.line, format!("function \"{w}\" not defined"))),
            },
            Kind::Field(f) => {
                let mut fields = vec![f];
                fields.extend(self.chain());
                return Ok(Arg::Field(fields));
            }
            Kind::Var(v) => {
                if !self.vars.contains(&v) {
                    return Err(self.err(t.line, format!("undefined variable \"${v}\"")));
                }
                let fields = self.chain();
                return Ok(Arg::Var(v, fields));
            }
            Kind::Dot => Arg::Dot,
            Kind::Lit(v) => Arg::Lit(v),
            Kind::LParen => {
                self.enter(t.line)?;
                let pipe = self.pipeline("parenthesized pipeline", false)?;
                let close = self.next();
                if close.kind != Kind::RParen {
                    return Err(self
                        .lex_err(&close)
                        .unwrap_or_else(|| self.err(close.line, "unclosed left paren")));
                }
                self.depth -= 1;
                let fields = self.chain();
                return Ok(Arg::Sub(Box::new(pipe), fields));
            }
            Kind::Error(_) => return Err(self.lex_err(&t).expect("error token")),
            other => {
                return Err(self.err(
                    t.line,
                    format!("unexpected {} in operand", describe(&other)),
                ))
            }
        };
        if let Token {
            kind: Kind::Field(_),
            spaced: false,
            line,
        } = self.peek()
        {
            return Err(self.err(*line, "unexpected field after a non-chainable operand"));
        }
        Ok(arg)
    }
}

fn describe(k: &Kind) -> String {
    match k {
        Kind::Text(_) => "text".into(),
        Kind::Open => "\"{{\"".into(),
        Kind::Close => "\"}}\"".into(),
        Kind::Ident(w) => format!("<{w}>"),
        Kind::Field(f) => format!("<.{f}>"),
        Kind::Var(v) => format!("<${v}>"),
        Kind::Dot => "<.>".into(),
        Kind::Lit(v) => format!("<{v}>"),
        Kind::Pipe => "\"|\"".into(),
        Kind::LParen => "\"(\"".into(),
        Kind::RParen => "\")\"".into(),
        Kind::Declare => "\":=\"".into(),
        Kind::Assign => "\"=\"".into(),
        Kind::Comma => "\",\"".into(),
        Kind::Error(e) => e.to_string(),
        Kind::Eof => "end of template".into(),
    }
}
