"""The Go text/template engine: syntax, semantics and limits, checked against Go's documented behaviour."""

from __future__ import annotations

import datetime

import pytest

from localllm.gotemplate import (
    GoStruct,
    GoTemplateError,
    GoTemplateExecError,
    GoTemplateSyntaxError,
    go_json,
    parse,
)
from localllm.llm.templates import looks_like_go_template


def run(source: str, data: object = None, **limits: int) -> str:
    return parse(source).execute(data, **limits)


# --- text, trimming, comments -----------------------------------------------------------------------------------


def test_plain_text_passes_through() -> None:
    assert run("hello {world}\n") == "hello {world}\n"
    assert run("") == ""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a  {{- .X -}}  b", "a1b"),
        ("a \n\t{{- .X }} b", "a1 b"),
        ("a {{ .X -}} \n b", "a 1b"),
        ("a {{-3}} b", "a -3 b"),  # no space after the dash: a negative number, not a trim marker
        ("a {{ 3 -}}\n\n{{- 4 }}", "a 34"),
        ("x\n{{- /* comment */ -}}\ny", "xy"),
        ("x {{/* a\nmulti-line comment */}} y", "x  y"),
    ],
)
def test_trim_markers_and_comments(source: str, expected: str) -> None:
    assert run(source, {"X": 1}) == expected


def test_comment_must_close_at_the_delimiter() -> None:
    with pytest.raises(GoTemplateSyntaxError, match="comment ends before closing delimiter"):
        parse("{{/* c */ x }}")
    with pytest.raises(GoTemplateSyntaxError, match="unclosed comment"):
        parse("{{/* c")


# --- data access ------------------------------------------------------------------------------------------------


def test_fields_on_maps() -> None:
    data = {"A": {"B": {"C": "deep"}}, "S": "s"}
    assert run("{{ .S }} {{ .A.B.C }} {{ $.A.B.C }} {{ (.A).B.C }} {{ (.A.B).C }}", data) == "s deep deep deep deep"


def test_missing_map_key_is_no_value_and_false() -> None:
    assert run("[{{ .Missing }}]", {}) == "[<no value>]"
    assert run("{{ if .Missing }}yes{{ else }}no{{ end }}", {}) == "no"
    assert run("{{ range .Missing }}x{{ else }}none{{ end }}", {}) == "none"


def test_field_of_missing_value_is_an_error() -> None:
    with pytest.raises(GoTemplateExecError, match=r"nil pointer evaluating interface \{\}\.B") as info:
        run("ab\n  {{ .A.B }}", {})
    assert (info.value.line, info.value.column) == (2, 6)


def test_struct_fields_are_strict() -> None:
    item = GoStruct("api.Thing", {"Name": "n", "Empty": ""}, {"name": "n"})
    assert run("{{ .Name }}|{{ if .Empty }}x{{ end }}|{{ . }}|{{ json . }}", item) == 'n||{"name":"n"}|{"name":"n"}'
    with pytest.raises(GoTemplateExecError, match="can't evaluate field Other in type api.Thing"):
        run("{{ .Other }}", item)


def test_dot_and_root() -> None:
    assert run("{{ . }}", "x") == "x"
    assert run("{{ range .L }}{{ . }}{{ $.Sep }}{{ end }}", {"L": [1, 2], "Sep": ","}) == "1,2,"


def test_variables_declare_assign_and_scope() -> None:
    assert run("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}") == "32"
    assert run("{{ $x := .A }}{{ with $x }}{{ $x }}{{ end }}", {"A": "a"}) == "a"
    assert run("{{ if $v := .A }}{{ $v }}{{ else }}{{ $v }}!{{ end }}", {"A": ""}) == "!"
    with pytest.raises(GoTemplateSyntaxError, match='undefined variable "\\$y"'):
        parse("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")
    with pytest.raises(GoTemplateSyntaxError, match='undefined variable "\\$z"'):
        parse("{{ $z = 1 }}")


def test_variable_field_chains() -> None:
    assert run("{{ $m := .M }}{{ $m.K }}{{ $.M.K }}", {"M": {"K": "v"}}) == "vv"


# --- literals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ "a\\tb\\n\\"q\\" \\u00e9\\x41\\101\\\\" }}', 'a\tb\n"q" éAA\\'),
        ("{{ `raw \\n {{ no action` }}", "raw \\n {{ no action"),
        (
            "{{ 42 }} {{ -7 }} {{ +3 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 017 }} {{ 1_000 }}",
            "42 -7 3 31 15 5 15 1000",
        ),
        (
            "{{ 1.5 }} {{ 1.0 }} {{ 2e3 }} {{ 1e6 }} {{ 0.0001 }} {{ 0.00001 }} {{ 123456.0 }}",
            "1.5 1 2000 1e+06 0.0001 1e-05 123456",
        ),
        ("{{ true }} {{ false }}", "true false"),
        ("{{ 'a' }} {{ '\\n' }}", "97 10"),
        ("{{ print nil }}", "<nil>"),
    ],
)
def test_literals(source: str, expected: str) -> None:
    assert run(source) == expected


def test_nil_is_not_a_command() -> None:
    with pytest.raises(GoTemplateExecError, match="nil is not a command"):
        run("{{ nil }}")


# --- printing ---------------------------------------------------------------------------------------------------


def test_printing_values() -> None:
    data = {"I": 3, "F": 2.5, "B": True, "N": None, "L": [1, "a", None], "M": {"b": 1, "a": "<x>"}}
    assert run("{{ .I }} {{ .F }} {{ .B }} {{ .N }}", data) == "3 2.5 true <no value>"
    assert run("{{ .L }} {{ .M }}", data) == '[1,"a",null] {"b":1,"a":"\\u003cx\\u003e"}'


# --- control structures -----------------------------------------------------------------------------------------


def test_if_else_if_else() -> None:
    source = '{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else if .X }}X{{ else }}other{{ end }}'
    assert [run(source, {"R": r, "X": x}) for r, x in (("a", 0), ("b", 0), ("c", 1), ("c", 0))] == [
        "A",
        "B",
        "X",
        "other",
    ]


@pytest.mark.parametrize(
    ("value", "truth"),
    [
        (False, False),
        (0, False),
        (0.0, False),
        ("", False),
        ([], False),
        ({}, False),
        (None, False),
        (True, True),
        (-1, True),
        (0.5, True),
        (" ", True),
        ([0], True),
        ({"a": None}, True),
        (GoStruct("T", {}, {}), True),
    ],
)
def test_go_truth(value: object, truth: bool) -> None:
    assert run("{{ if .V }}T{{ else }}F{{ end }}", {"V": value}) == ("T" if truth else "F")
    assert run("{{ not .V }}", {"V": value}) == ("false" if truth else "true")


def test_range_over_lists_maps_and_ints() -> None:
    assert run("{{ range .L }}<{{ . }}>{{ end }}", {"L": ["a", "b"]}) == "<a><b>"
    assert run("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}", {"L": ["a", "b"]}) == "0=a;1=b;"
    assert run("{{ range $v := .L }}{{ $v }}{{ end }}", {"L": ["a", "b"]}) == "ab"
    assert run("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}", {"M": {"b": 2, "a": 1, "c": 3}}) == "a=1;b=2;c=3;"
    assert run("{{ range 3 }}{{ . }}{{ end }}|{{ range $i := 2 }}{{ $i }}{{ end }}") == "012|01"
    assert run("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}) == "empty"
    with pytest.raises(GoTemplateExecError, match="range can't iterate over abc"):
        run("{{ range . }}{{ end }}", "abc")


def test_range_break_and_continue() -> None:
    source = (
        "{{ range $i, $e := .L }}{{ if eq $i 1 }}{{ continue }}{{ end }}"
        "{{ if eq $e 4 }}{{ break }}{{ end }}{{ $e }}{{ end }}"
    )
    assert run(source, {"L": [1, 2, 3, 4, 5]}) == "13"
    with pytest.raises(GoTemplateSyntaxError, match=r"\{\{break\}\} outside \{\{range\}\}"):
        parse("{{ if true }}{{ break }}{{ end }}")


def test_range_variables_are_fresh_per_iteration() -> None:
    assert run("{{ range .L }}{{ $x := . }}{{ $x }}{{ end }}", {"L": [1, 2]}) == "12"


def test_with_else_with_else() -> None:
    source = "{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}"
    assert run(source, {"A": "1"}) == "a=1"
    assert run(source, {"B": "2"}) == "b=2"
    assert run(source, {}) == "none"


def test_define_template_block() -> None:
    source = (
        '{{ define "item" }}[{{ . }}]{{ end }}{{ range .L }}{{ template "item" . }}{{ end }}'
        '{{ block "b" .S }}<{{ . }}>{{ end }}'
    )
    assert run(source, {"L": [1, 2], "S": "s"}) == "[1][2]<s>"
    with pytest.raises(GoTemplateExecError, match='no template "nope"'):
        run('{{ template "nope" }}')


def test_recursive_templates_are_bounded() -> None:
    with pytest.raises(GoTemplateExecError):
        run('{{ define "r" }}x{{ template "r" . }}{{ end }}{{ template "r" . }}')


# --- functions --------------------------------------------------------------------------------------------------


def test_and_or_return_the_deciding_value() -> None:
    assert run('{{ and 1 "x" 2 }}|{{ and 1 0 "x" }}|{{ or 0 "" "y" "z" }}|{{ or 0 "" }}') == "2|0|y|"


def test_and_or_short_circuit() -> None:
    # the second operand would fail (a field of a missing value) if it were evaluated
    assert run("{{ and .Missing .Missing.Field }}", {}) == "<no value>"
    assert run("{{ or 1 .Missing.Field }}", {}) == "1"
    with pytest.raises(GoTemplateExecError):
        run("{{ and 1 .Missing.Field }}", {})


def test_comparisons() -> None:
    assert run('{{ eq .R "user" }} {{ eq .R "system" "user" }} {{ eq .R "a" "b" }}', {"R": "user"}) == "true true false"
    assert (
        run('{{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1.5 2.5 }} {{ ge "b" "a" }}') == "true true true false true"
    )
    assert run('{{ eq .Missing "x" }}', {}) == "false"
    with pytest.raises(GoTemplateExecError, match="incompatible types for comparison"):
        run("{{ eq 1 1.0 }}")
    with pytest.raises(GoTemplateExecError, match="incompatible types for comparison"):
        run('{{ lt 1 "a" }}')


def test_len_index_slice() -> None:
    data = {"L": [1, 2, 3, 4], "S": "hello", "M": {"k": "v"}}
    assert run('{{ len .L }} {{ len .S }} {{ len .M }} {{ len "é" }}', data) == "4 5 1 2"
    assert run('{{ index .L 2 }} {{ index .M "k" }} {{ index .M "x" }}', data) == "3 v <no value>"
    assert run("{{ slice .L 1 3 }} {{ slice .L 2 }} {{ slice .S 1 3 }} {{ slice .S }}", data) == "[2,3] [3,4] el hello"
    assert run("{{ len (slice .L 3) }}", data) == "1"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ index .L 9 }}", "index out of range: 9"),
        ("{{ slice .L 2 9 }}", "index out of range: 9"),
        ("{{ slice .L 3 1 }}", "invalid slice index: 3 > 1"),
        ("{{ slice .S 1 9 }}", "index out of range: 9"),
        ('{{ index .L "a" }}', "cannot index slice/array with type string"),
        ("{{ len 3 }}", "len of type int"),
    ],
)
def test_function_errors_name_line_and_column(source: str, message: str) -> None:
    with pytest.raises(GoTemplateExecError, match=message) as info:
        run("\n  " + source, {"L": [1, 2, 3], "S": "abc"})
    assert info.value.line == 2
    assert info.value.column == 6
    assert str(info.value).startswith("template: 2:6: ")


def test_print_printf_println() -> None:
    assert run('{{ print 1 2 "a" "b" 3 }}') == "1 2ab3"
    assert run('{{ println "a" 1 }}') == "a 1\n"
    assert run('{{ printf "%s|%d|%v|%q|%5.2f|%-3s|%03d|%x|%t|%%" "s" 7 true "q\\"" 3.14159 "l" 5 255 false }}') == (
        's|7|true|"q\\""| 3.14|l  |005|ff|false|%'
    )
    assert run('{{ printf "%d %d" 1 }}') == "1 %!d(MISSING)"
    assert run('{{ printf "%d" "x" }}') == "%!d(string=x)"
    assert run('{{ "x" | printf "%s-%s" "y" }}') == "y-x"


def test_pipelines_pass_the_value_last() -> None:
    assert run("{{ .L | len }}", {"L": [1, 2]}) == "2"
    assert run('{{ "a" | eq "a" }} {{ 3 | printf "%d-%d" 4 }}') == "true 4-3"
    assert run('{{ (len .L) | printf "%d" }}', {"L": [1]}) == "1"


def test_escaping_functions() -> None:
    assert run('{{ html "<a href=\'x\'>&\\"" }}') == "&lt;a href=&#39;x&#39;&gt;&amp;&#34;"
    assert run('{{ js "it\'s <b>" }}') == "it\\'s \\u003Cb\\u003E"
    assert run('{{ urlquery "a b&c=d/é" }}') == "a+b%26c%3Dd%2F%C3%A9"


def test_json_is_go_marshal() -> None:
    data = {"z": 1, "a": "<b>&", "f": 1.0, "g": 1.5, "big": 1e21, "n": None, "l": [True, {"k": "v"}], "u": "é\u2028"}
    assert run("{{ json . }}", data) == (
        '{"z":1,"a":"\\u003cb\\u003e\\u0026","f":1,"g":1.5,"big":1e+21,"n":null,"l":[true,{"k":"v"}],"u":"é\\u2028"}'
    )
    assert go_json("x\n\t\x01") == '"x\\n\\t\\u0001"'


def test_ollama_functions() -> None:
    today = datetime.date.today()
    assert run("{{ currentDate }}") == today.strftime("%Y-%m-%d")
    assert run('{{ currentDate "ignored" }}') == today.strftime("%Y-%m-%d")
    assert run("{{ yesterdayDate }}") == (today - datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    prop = GoStruct("api.ToolProperty", {}, {"type": ["string", "null"]})
    assert run("{{ toTypeScriptType . }}", prop) == "string | null"
    assert run("{{ toTypeScriptType . }}", GoStruct("api.ToolProperty", {}, {"type": "integer"})) == "number"
    assert run("{{ toTypeScriptType . }}", "x") == "any"


def test_unknown_function_is_a_syntax_error() -> None:
    with pytest.raises(GoTemplateSyntaxError, match='function "nope" not defined') as info:
        parse("x\n\n  {{ .A | nope }}")
    assert (info.value.line, info.value.column) == (3, 11)
    assert str(info.value) == 'template: 3:11: function "nope" not defined'


# --- syntax errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "line", "column"),
    [
        ("one\ntwo\nthree {{ .A }", 'unexpected "}" in operand', 3, 13),
        ("{{ .A", "unclosed action", 1, 1),
        ("{{ if .A }}x", "unexpected EOF", 1, 13),
        ("{{ if }}", "missing value for if", 1, 7),
        ("{{ end }}", "unexpected {{end}}", 1, 4),
        ("{{ else }}", "unexpected {{else}}", 1, 4),
        ('{{ "abc }}', "unterminated quoted string", 1, 4),
        ("{{ `abc }}", "unterminated raw quoted string", 1, 4),
        ("{{ 1 | 2 }}", "non executable command in pipeline stage 2", 1, 8),
        ("{{ .A ) }}", "unexpected right paren", 1, 7),
        ("{{ (.A }}", "unclosed left paren", 1, 8),
        ("{{ }}", "missing value for command", 1, 4),
        ("{{ 3x }}", "bad number syntax", 1, 4),
        ("{{ if .A }}{{ else }}{{ else }}{{ end }}", "expected end; found {{else}}", 1, 25),
        ("{{ @ }}", 'unexpected "@" in operand', 1, 4),
    ],
)
def test_syntax_errors(source: str, message: str, line: int, column: int) -> None:
    with pytest.raises(GoTemplateSyntaxError) as info:
        parse(source)
    assert message in info.value.message
    assert (info.value.line, info.value.column) == (line, column)
    assert str(info.value) == f"template: {line}:{column}: {info.value.message}"
    assert isinstance(info.value, GoTemplateError)


def test_deep_nesting_is_a_clean_syntax_error() -> None:
    with pytest.raises(GoTemplateSyntaxError, match="nested too deeply"):
        parse("{{ if 1 }}" * 5000 + "{{ end }}" * 5000)
    with pytest.raises(GoTemplateSyntaxError, match="nested too deeply"):
        parse("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    assert run("{{ if 1 }}" * 50 + "x" + "{{ end }}" * 50) == "x"


# --- budgets ----------------------------------------------------------------------------------------------------


def test_step_budget_stops_nested_ranges() -> None:
    with pytest.raises(GoTemplateExecError, match="steps"):
        run("{{ range 100000 }}{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}{{ end }}")
    with pytest.raises(GoTemplateExecError, match="steps"):
        run("{{ range 1000 }}x{{ end }}", max_steps=500)


def test_output_budget() -> None:
    with pytest.raises(GoTemplateExecError, match="output exceeds"):
        run('{{ range 100 }}{{ printf "%0900000d" 1 }}{{ end }}')
    with pytest.raises(GoTemplateExecError, match="output exceeds"):
        run("{{ range 20 }}0123456789{{ end }}", max_output=100)
    assert run("{{ range 10 }}0123456789{{ end }}", max_output=100) == "0123456789" * 10


def test_growing_value_is_bounded() -> None:
    with pytest.raises(GoTemplateExecError, match="exceeds"):
        run('{{ $x := "ab" }}{{ range 64 }}{{ $x = printf "%s%s" $x $x }}{{ end }}')


# --- Ollama's helpers -------------------------------------------------------------------------------------------


def test_uses_is_case_insensitive_and_sees_everything() -> None:
    template = parse(
        "{{ if .System }}{{ range $m := $.Messages }}{{ .Content }}{{ end }}{{ end }}"
        '{{ define "t" }}{{ .Tools }}{{ end }}'
    )
    assert template.uses("messages")
    assert template.uses("Messages")
    assert template.uses("content")
    assert template.uses("tools")
    assert not template.uses("response")
    assert not parse("{{ .Prompt }}").uses("messages")


def test_cut_after_response() -> None:
    template = parse(
        "<s>{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST] {{ .Response }}</s>{{ if .X }}x{{ end }}"
    )
    data = {"System": "S", "Prompt": "P", "Response": "", "X": True}
    assert template.cut_after("Response").execute(data) == "<s>S P [/INST] "
    assert template.execute(data) == "<s>S P [/INST] </s>x"


def test_cut_after_keeps_the_structure_around_it() -> None:
    source = "{{ if .Response }}[{{ .Response }}]end{{ else }}none{{ end }}tail"
    cut = parse(source).cut_after("Response")
    assert cut.execute({"Response": "r"}) == "[r"
    assert cut.execute({"Response": ""}) == ""  # the else list after the cut is dropped too
    # a condition is not walked: only an action names the field
    assert parse("{{ if .Response }}a{{ end }}b").cut_after("Response").execute({"Response": "x"}) == "ab"
    # arguments after the field in its action are dropped
    assert parse('{{ printf "%s" .Response "extra" }}!').cut_after("Response").execute({"Response": "r"}) == "r"
    # without the field nothing is cut
    assert parse("a{{ .B }}c").cut_after("Response").execute({"B": "b"}) == "abc"


def test_looks_like_go_template() -> None:
    assert looks_like_go_template("{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}")
    assert looks_like_go_template("{{- range .Messages }}{{ .Content }}{{ end }}")
    assert not looks_like_go_template("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_printf_refuses_huge_width_and_precision_as_go_does() -> None:
    assert run('{{ printf "%.9999999f|%9999999d" 1.5 2 }}') == "%!(BADPREC)1.500000|%!(BADWIDTH)2"


def test_variables_named_like_fields_are_not_fields() -> None:
    # Ollama's Vars() keeps a variable's $: $messages is not .Messages
    template = parse("{{ $messages := 1 }}{{ $messages }}")
    assert not template.uses("messages")
    assert template.uses("$messages")


def test_structs_nest_and_marshal_as_their_json() -> None:
    inner = GoStruct("T.Inner", {"Name": "n"}, {"name": "n"})
    outer = GoStruct("T.Outer", {"Inner": inner, "List": [inner]}, {"inner": inner, "list": [inner]})
    assert run("{{ .Inner.Name }} {{ (index .List 0).Name }} {{ json . }}", outer) == (
        'n n {"inner":{"name":"n"},"list":[{"name":"n"}]}'
    )
