//! Behaviour tests of the whole engine: a table of templates, consul-template's nginx example,
//! parse and execution errors with their lines, and property tests that nothing panics.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{parse, DataSource, FuncError, TemplateError};

/// A stand-in for the Consul-backed data source.
#[derive(Default)]
struct Fake {
    web: Vec<Value>,
    calls: Vec<(String, Vec<Value>)>,
}

impl Fake {
    fn with_web() -> Self {
        Fake {
            web: vec![
                json!({"Address": "10.0.0.1", "Port": 8080, "Tags": ["blue", "v1"], "Status": "passing"}),
                json!({"Address": "10.0.0.2", "Port": 8081, "Tags": ["green", "v1"], "Status": "passing"}),
            ],
            calls: vec![],
        }
    }
}

const NAMES: &[&str] = &[
    "service",
    "services",
    "key",
    "keyOrDefault",
    "keyExists",
    "ls",
    "tree",
    "env",
    "nodes",
    "fail",
];

impl DataSource for Fake {
    fn call(&mut self, name: &str, args: &[Value]) -> Result<Option<Value>, FuncError> {
        self.calls.push((name.to_string(), args.to_vec()));
        let arg = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or("");
        Ok(Some(match name {
            "service" if arg(0) == "web" => Value::Array(self.web.clone()),
            "service" | "nodes" | "ls" | "tree" => json!([]),
            "services" => json!([{"Name": "web", "Tags": ["v1"]}, {"Name": "db", "Tags": []}]),
            "key" => match arg(0) {
                "a" => json!("x"),
                _ => return Err(format!("key {:?} not found", arg(0)).into()),
            },
            "keyOrDefault" => json!(if arg(0) == "a" { "x" } else { arg(1) }),
            "keyExists" => json!(arg(0) == "a"),
            "env" => json!(if arg(0) == "HOME" { "/root" } else { "" }),
            "fail" => return Err("boom".into()),
            _ => return Ok(None),
        }))
    }

    fn names(&self) -> Vec<&'static str> {
        NAMES.to_vec()
    }
}

fn dot() -> Value {
    json!({
        "Name": "web",
        "Port": 8080,
        "Ratio": 2.5,
        "Zero": 0,
        "Empty": "",
        "Nothing": null,
        "List": [{"Name": "a"}, {"Name": "b"}, {"Name": "c"}],
        "Tags": ["blue", "v1"],
        "Map": {"b": 2, "a": 1, "c": 3},
        "Service": {"Port": 443, "Meta": {"env": "prod"}},
        "Html": "<a&b>",
    })
}

fn render(text: &str) -> Result<String, TemplateError> {
    let mut fake = Fake::with_web();
    let names = fake.names();
    parse("t", text, &names)?.execute(&dot(), &mut fake)
}

#[test]
fn table_of_constructs_and_builtins() {
    let cases: &[(&str, &str)] = &[
        // Text, literals, fields, variables.
        ("plain text", "plain text"),
        (r#"{{"a\tb\"c\u00e9\x41"}}"#, "a\tb\"céA"),
        ("{{`raw\\n{{x}}`}}", "raw\\n{{x}}"),
        ("{{42}} {{-7}} {{0x10}} {{1.5}} {{1e3}} {{true}} {{false}}", "42 -7 16 1.5 1000 true false"),
        ("{{.Name}}:{{.Port}}", "web:8080"),
        ("{{.Service.Port}} {{.Service.Meta.env}}", "443 prod"),
        ("{{.Missing}}|{{.Nothing}}|{{.Service.Missing}}", "<no value>|<no value>|<no value>"),
        ("{{.Tags}} {{.Map}}", "[blue v1] map[a:1 b:2 c:3]"),
        ("{{$.Name}} {{with .Service}}{{$.Name}}{{.Port}}{{end}}", "web web443"),
        ("{{with .Service}}{{.}}{{end}}", "map[Meta:map[env:prod] Port:443]"),
        // Trim markers and comments.
        ("a  {{- .Name -}}  \n b", "awebb"),
        ("a {{.Name -}}\n\n b", "a webb"),
        ("a {{.Name}} \n b", "a web \n b"),
        ("a\n{{- /* gone */ -}}\nb", "ab"),
        ("a{{/* multi\nline */}}b", "ab"),
        ("{{3 -}} {{- 4}}", "34"),
        // if / else if / else.
        ("{{if .Port}}yes{{end}}", "yes"),
        ("{{if .Zero}}yes{{else}}no{{end}}", "no"),
        ("{{if .Empty}}1{{else if .Nothing}}2{{else if .Tags}}3{{else}}4{{end}}", "3"),
        ("{{if .Missing}}1{{else if false}}2{{else}}4{{end}}", "4"),
        ("{{if $p := .Port}}{{$p}}{{end}}", "8080"),
        ("{{if $a := 0}}x{{else if $b := 2}}{{$a}}{{$b}}{{end}}", "02"),
        // range.
        ("{{range .List}}{{.Name}},{{end}}", "a,b,c,"),
        ("{{range $i, $e := .List}}{{$i}}={{$e.Name}};{{end}}", "0=a;1=b;2=c;"),
        ("{{range $e := .Tags}}<{{$e}}>{{end}}", "<blue><v1>"),
        ("{{range $k, $v := .Map}}{{$k}}{{$v}}{{end}}", "a1b2c3"),
        ("{{range .Map}}{{.}}{{end}}", "123"),
        ("{{range .Nothing}}x{{else}}empty{{end}}", "empty"),
        ("{{range .Missing}}x{{else}}empty{{end}}", "empty"),
        ("{{range service \"db\"}}x{{else}}none{{end}}", "none"),
        ("{{range .List}}{{$.Port}}{{end}}", "808080808080"),
        // with.
        ("{{with .Service.Meta}}{{.env}}{{end}}", "prod"),
        ("{{with .Empty}}x{{else}}no {{.Name}}{{end}}", "no web"),
        ("{{with $m := .Service.Meta}}{{$m.env}}{{end}}", "prod"),
        ("{{with .Missing}}1{{else with .Zero}}2{{else with .Port}}{{.}}{{end}}", "8080"),
        ("{{with .Missing}}1{{else with .Zero}}2{{else}}3{{end}}", "3"),
        // Variables and scoping.
        ("{{$x := 1}}{{$x}}", "1"),
        ("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}", "2"),
        ("{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}", "21"),
        ("{{$n := 0}}{{range .List}}{{$n = add 1 $n}}{{end}}{{$n}}", "3"),
        ("{{range .List}}{{$y := .Name}}{{$y}}{{end}}", "abc"),
        ("{{$x := .Service}}{{$x.Meta.env}}", "prod"),
        // Pipelines and parentheses.
        ("{{.Port | add 1}}", "8081"),
        (r#"{{"a" | printf "%s-%s" "b"}}"#, "b-a"),
        (r#"{{len (split "," "a,b,c")}}"#, "3"),
        ("{{(index .List 1).Name}}", "b"),
        (r#"{{"x" | printf "%s" | toUpper | printf "[%s]"}}"#, "[X]"),
        ("{{(service \"web\" | len) | add 10}}", "12"),
        // Comparison and logic.
        ("{{and 1 0}} {{and 1 2}} {{or 0 \"\" \"x\"}} {{or 0 false}}", "0 2 x false"),
        ("{{not 0}} {{not .Tags}}", "true false"),
        ("{{and .Missing .Missing.X}}", "<no value>"),
        ("{{or .Name .Missing.X}}", "web"),
        ("{{eq 1 2 1}} {{eq \"a\" \"b\"}} {{eq .Port 8080}} {{eq 2 2.0}}", "true false true true"),
        ("{{ne \"a\" \"b\"}} {{lt 1 2}} {{le 2 2}} {{gt \"b\" \"a\"}} {{ge 1 2}}", "true true true true false"),
        ("{{if eq .Name \"web\" \"db\"}}ok{{end}}", "ok"),
        ("{{eq .Missing \"x\"}} {{ne .Nothing 1}} {{eq .Nothing nil}}", "false true true"),
        // len, index.
        ("{{len .Tags}} {{len .Name}} {{len .Map}}", "2 3 3"),
        ("{{index .Tags 1}} {{index .Map \"b\"}} {{index .Service \"Meta\" \"env\"}}", "v1 2 prod"),
        ("{{index .Map \"zz\"}}", "<no value>"),
        // print family.
        ("{{print 1 2 \"a\" 3 \"b\" \"c\"}}", "1 2a3bc"),
        ("{{println 1 \"a\"}}", "1 a\n"),
        ("{{printf \"%s:%d %v %q %.1f %5s|%-3d|%%\" .Name .Port .Tags \"q\" .Ratio \"r\" 7}}", "web:8080 [blue v1] \"q\" 2.5     r|7  |%"),
        ("{{printf \"%d\" \"x\"}}", "%!d(string=x)"),
        // consul-template helpers.
        ("{{.Tags | contains \"v1\"}} {{contains \"ell\" \"hello\"}} {{contains \"x\" .Tags}}", "true true false"),
        ("{{in .Tags \"blue\"}} {{in \"hello\" \"lo\"}} {{in .Tags \"red\"}}", "true true false"),
        ("{{join \",\" .Tags}} {{.Tags | join \"-\"}}", "blue,v1 blue-v1"),
        ("{{range split \",\" \"a,b\"}}[{{.}}]{{end}} {{len (split \",\" \"\")}}", "[a][b] 0"),
        ("{{toJSON .Map}} {{toJSON .Html}}", r#"{"a":1,"b":2,"c":3} "\u003ca\u0026b\u003e""#),
        ("{{toJSONPretty .Service.Meta}}", "{\n  \"env\": \"prod\"\n}"),
        (r#"{{(parseJSON "{\"a\":[1,2]}").a}} {{len (parseJSON "")}}"#, "[1 2] 0"),
        (r#"{{toLower "AbC"}} {{toUpper "AbC"}} {{toTitle "hello big world"}} [{{trimSpace "  x \n"}}]"#, "abc ABC Hello Big World [x]"),
        (r#"{{replaceAll "." "_" "a.b.c"}} {{"a.b" | replaceAll "." "/"}}"#, "a_b_c a/b"),
        (r#"{{regexMatch "^web-[0-9]+$" "web-12"}} {{regexMatch "^x" "web"}}"#, "true false"),
        (r#"{{regexReplaceAll "(\\w+)@(\\w+)" "$2:$1" "bob@host"}}"#, "host:bob"),
        // Arithmetic: the piped (last) argument is the left operand.
        ("{{add 1 2}} {{10 | subtract 3}} {{subtract 3 10}} {{multiply 4 5}}", "3 7 7 20"),
        ("{{divide 2 7}} {{7 | divide 2}} {{modulo 3 10}} {{10 | modulo 4}}", "3 3 1 2"),
        ("{{multiply 2 2.5}} {{divide 4 10.0}} {{add .Ratio 1}} {{subtract 0.5 1}}", "5 2.5 3.5 0.5"),
        // byTag and data functions.
        ("{{range $tag, $s := service \"web\" | byTag}}{{$tag}}={{range $s}}{{.Port}} {{end}};{{end}}", "blue=8080 ;green=8081 ;v1=8080 8081 ;"),
        (r#"{{key "a"}} {{keyOrDefault "b" "dflt"}} {{keyExists "a"}} {{env "HOME"}}"#, "x dflt true /root"),
        ("{{range services}}{{.Name}} {{end}}", "web db "),
        ("{{with service \"web\"}}{{(index . 0).Address}}{{end}}", "10.0.0.1"),
    ];
    let mut failures = vec![];
    for (text, want) in cases {
        match render(text) {
            Ok(got) if got == *want => {}
            other => failures.push(format!("{text:?}: want {want:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn timestamp_formats() {
    let now = render("{{timestamp}}").unwrap();
    assert_eq!(now.len(), 20, "{now}");
    assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    let unix: i64 = render(r#"{{timestamp "unix"}}"#).unwrap().parse().unwrap();
    assert!(unix > 1_600_000_000);
    assert!(render(r#"{{timestamp "2006-01-02"}}"#).is_err());
}

const NGINX: &str = "upstream web { least_conn; {{range service \"web\"}}server {{.Address}}:{{.Port}};{{else}}server 127.0.0.1:65535;{{end}} }";

#[test]
fn nginx_example_with_instances() {
    let mut fake = Fake::with_web();
    let t = parse("nginx.ctmpl", NGINX, &fake.names()).unwrap();
    let out = t.execute(&Value::Null, &mut fake).unwrap();
    assert_eq!(
        out,
        "upstream web { least_conn; server 10.0.0.1:8080;server 10.0.0.2:8081; }"
    );
    assert_eq!(
        fake.calls,
        vec![("service".to_string(), vec![json!("web")])]
    );
}

#[test]
fn nginx_example_without_instances() {
    let mut fake = Fake::default();
    let t = parse("nginx.ctmpl", NGINX, &fake.names()).unwrap();
    let out = t.execute(&Value::Null, &mut fake).unwrap();
    assert_eq!(out, "upstream web { least_conn; server 127.0.0.1:65535; }");
    // Parsed once, executed again with other data.
    let mut fake = Fake::with_web();
    assert!(t
        .execute(&Value::Null, &mut fake)
        .unwrap()
        .contains("10.0.0.2:8081"));
}

#[test]
fn literal_calls_are_discovered_in_order() {
    let text = r#"{{range service "web"}}{{key "a"}}{{key .Name}}{{end}}
{{if keyExists "flag"}}{{with tree "cfg/"}}{{end}}{{else}}{{keyOrDefault "x" "y"}}{{end}}
{{service "web" | len}}{{len (ls "p/")}}{{"z" | key}}{{len services}}{{env "HOME"}}{{printf "%s" "not data"}}"#;
    let t = parse("deps", text, NAMES).unwrap();
    let want: Vec<(String, Vec<Value>)> = vec![
        ("service".into(), vec![json!("web")]),
        ("key".into(), vec![json!("a")]),
        ("keyExists".into(), vec![json!("flag")]),
        ("tree".into(), vec![json!("cfg/")]),
        ("keyOrDefault".into(), vec![json!("x"), json!("y")]),
        ("ls".into(), vec![json!("p/")]),
        ("services".into(), vec![]),
        ("env".into(), vec![json!("HOME")]),
    ];
    assert_eq!(t.literal_calls(), want);
}

#[test]
fn parse_errors_name_the_line() {
    let cases: &[(&str, &str)] = &[
        (
            "line1\n{{sevice \"web\"}}",
            "web.ctmpl:2: function \"sevice\" not defined",
        ),
        ("a\n\n{{end}}", "web.ctmpl:3: unexpected {{end}}"),
        ("a\n{{else}}", "web.ctmpl:2: unexpected {{else}}"),
        (
            "x\n{{range .A}}\n{{if .B}}{{end}}\nfoo\n",
            "web.ctmpl:2: missing {{end}} for {{range}}",
        ),
        (
            "{{if 1}}\n{{with 2}}\n{{end}}",
            "web.ctmpl:1: missing {{end}} for {{if}}",
        ),
        ("a\n{{ .X \n\n", "web.ctmpl:2: unclosed action"),
        ("a\n{{ .X }\n", "web.ctmpl:2: unexpected '}' in command"),
        (
            "\n\n{{ \"abc }}\n",
            "web.ctmpl:3: unterminated quoted string",
        ),
        (
            "\n{{ `abc }}",
            "web.ctmpl:2: unterminated raw quoted string",
        ),
        ("{{/* open", "web.ctmpl:1: unclosed comment"),
        ("{{$x}}", "web.ctmpl:1: undefined variable \"$x\""),
        (
            "{{if true}}{{$x := 1}}{{end}}\n{{$x}}",
            "web.ctmpl:2: undefined variable \"$x\"",
        ),
        ("{{$y = 1}}", "web.ctmpl:1: undefined variable \"$y\""),
        (
            "{{define \"x\"}}{{end}}",
            "web.ctmpl:1: {{define}} is not supported",
        ),
        (
            "\n{{template \"x\"}}",
            "web.ctmpl:2: {{template}} is not supported",
        ),
        ("{{}}", "web.ctmpl:1: missing value for command"),
        ("{{if}}{{end}}", "web.ctmpl:1: missing value for if"),
        ("{{.X | }}", "web.ctmpl:1: missing value for command"),
        (
            "{{1 | 2}}",
            "web.ctmpl:1: non executable command in pipeline stage 2",
        ),
        (
            "{{.X 1}}",
            "web.ctmpl:1: can't give argument to non-function",
        ),
        ("{{nil}}", "web.ctmpl:1: nil is not a command"),
        ("{{(len .X}}", "web.ctmpl:1: unclosed left paren"),
        (
            "{{range .X}}{{else if 1}}{{end}}",
            "web.ctmpl:1: unexpected <if> after {{else}} in {{range}}",
        ),
        (
            "{{with 1}}\n{{else with 2}}",
            "web.ctmpl:2: missing {{end}} for {{with}}",
        ),
        ("{{1.2.3}}", "web.ctmpl:1: bad number syntax: \"1.2.3\""),
        (
            "{{if 1}}{{else}}{{else}}{{end}}",
            "web.ctmpl:1: expected end; found {{else}} (in {{if}} at line 1)",
        ),
    ];
    let mut failures = vec![];
    for (text, want) in cases {
        match parse("web.ctmpl", text, NAMES) {
            Err(e @ TemplateError::Parse { .. }) if e.to_string() == *want => {}
            other => failures.push(format!("{text:?}: want {want:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn execution_errors_name_the_line() {
    let cases: &[(&str, &str)] = &[
        ("\n{{.Missing.Port}}", "t:2: nil pointer evaluating <no value>.Port"),
        ("{{.Name.First}}", "t:1: can't evaluate field First in type string"),
        ("\n\n{{divide 0 1}}", "t:3: divide: division by zero"),
        ("{{modulo 0 1}}", "t:1: modulo: division by zero"),
        ("{{key \"nope\"}}", "t:1: error calling key: key \"nope\" not found"),
        ("\n{{fail}}", "t:2: error calling fail: boom"),
        ("{{range .Name}}{{end}}", "t:1: range can't iterate over web"),
        ("{{index .Tags 5}}", "t:1: error calling index: index out of range: 5"),
        ("{{lt .Tags 1}}", "t:1: non-comparable type"),
        ("{{lt .Nothing 1}}", "t:1: invalid type for comparison in lt"),
        ("{{eq 1 \"1\"}}", "t:1: incompatible types for comparison: int and string"),
        ("{{add \"1\" 2}}", "t:1: add: expected a number, got string"),
        ("{{toUpper 1}}", "t:1: toUpper: expected string; got int"),
        ("{{regexMatch \"(\" \"x\"}}", "t:1: invalid regular expression: regex parse error:\n    (\n    ^\nerror: unclosed group"),
        ("{{not}}", "t:1: wrong number of args for not: want 1 got 0"),
        ("{{add 9223372036854775807 9223372036854775807 | multiply 9223372036854775807}}", "t:1: integer overflow"),
    ];
    let mut failures = vec![];
    for (text, want) in cases {
        match render(text) {
            Err(e @ TemplateError::Exec { .. }) if e.to_string() == *want => {}
            other => failures.push(format!("{text:?}: want {want:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nesting_is_bounded() {
    let deep = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(render(&format!("{{{{{}}}}}", deep(90))).unwrap(), "1");
    let err = render(&format!("{{{{{}}}}}", deep(150))).unwrap_err();
    assert_eq!(err.reason(), "template nested too deeply");
    let ifs = |n: usize| format!("{}x{}", "{{if 1}}".repeat(n), "{{end}}".repeat(n));
    assert_eq!(render(&ifs(90)).unwrap(), "x");
    assert!(render(&ifs(150)).is_err());
}

#[test]
fn data_source_without_the_function_is_an_exec_error() {
    // Parsed with a name the data source then does not answer.
    let t = parse("t", "\n{{nodes}}{{mystery 1}}", &["nodes", "mystery"]).unwrap();
    let err = t.execute(&Value::Null, &mut Fake::default()).unwrap_err();
    assert_eq!(err.to_string(), "t:2: function \"mystery\" not defined");
}

/// Text built mostly from the pieces templates are made of, so that the fuzzing reaches deep
/// into the parser instead of stopping at the first character.
fn fragments() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{{- ".to_string()),
        Just(" -}}".to_string()),
        Just("{{/*".to_string()),
        Just("*/}}".to_string()),
        Just("range".to_string()),
        Just("if".to_string()),
        Just("with".to_string()),
        Just("else".to_string()),
        Just("end".to_string()),
        Just("|".to_string()),
        Just("$x :=".to_string()),
        Just("$x =".to_string()),
        Just("$i, $e :=".to_string()),
        Just("$x".to_string()),
        Just("$".to_string()),
        Just("\"".to_string()),
        Just("`".to_string()),
        Just("-".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(".".to_string()),
        Just(".A".to_string()),
        Just(".List".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("\\".to_string()),
        Just("service \"web\"".to_string()),
        Just("key".to_string()),
        Just("fail".to_string()),
        Just("nil".to_string()),
        Just("1".to_string()),
        Just("0".to_string()),
        Just("2.5".to_string()),
        Just("\"s\"".to_string()),
        prop::sample::select(super::BUILTINS).prop_map(str::to_string),
        "[ -~]{0,3}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn run_anything(text: &str) {
    let data = json!({"A": {"B": [1, "x", null]}, "List": [1, 2, {"A": 3}], "x": "y"});
    if let Ok(t) = parse("fuzz", text, NAMES) {
        let _ = t.literal_calls();
        let _ = t.execute(&data, &mut Fake::with_web());
        let _ = t.execute(&Value::Null, &mut Fake::default());
    }
}

proptest! {
    #[test]
    fn parse_and_execute_never_panic_on_arbitrary_text(text in any::<String>()) {
        run_anything(&text);
    }

    #[test]
    fn parse_and_execute_never_panic_on_template_fragments(text in fragments()) {
        run_anything(&text);
    }

    #[test]
    fn errors_point_inside_the_text(text in fragments()) {
        if let Err(e) = parse("fuzz", &text, NAMES) {
            let lines = text.matches('\n').count() + 1;
            prop_assert!(e.line() >= 1 && e.line() <= lines, "{e} for {text:?}");
        }
    }
}
