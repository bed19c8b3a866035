// Expands Grafana alert templates with Go's own text/template, the way Grafana does.
//
// Built and run by tests/dashboards/test_go_templates.py (standard library only, no module).
// Reads a JSON list of {"name", "kind", "text", "labels", "values"} on stdin and writes a JSON list
// of {"name", "output", "error"}. Kinds:
//
//   - "rule": an alert rule annotation or label. Mirrors Expand() in Grafana's
//     pkg/services/ngalert/state/template/template.go: the $labels/$values/$value prefix, the data
//     {Labels, Values, Value}, missingkey=invalid, "<no value>" -> "[no value]"; the functions of
//     Prometheus' template.NewTemplateExpander (template/template.go) plus Grafana's defaultFuncs
//     (pkg/services/ngalert/state/template/funcs.go).
//   - "notification": a contact point setting (e-mail subject, webhook title ...). Mirrors the
//     notification data of Alertmanager's template/template.go (Data, Alert, KV with Firing(),
//     Resolved(), SortedPairs() ...) extended by Grafana (DashboardURL, PanelURL, SilenceURL,
//     Values, ValueString), with Alertmanager's DefaultFuncs.
//
// Functions are declared with their real names and argument types; those the generated templates
// use behave as the originals, the others are stubs (a name that does not exist fails to parse).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	texttemplate "text/template"
)

type request struct {
	Name   string             `json:"name"`
	Kind   string             `json:"kind"`
	Text   string             `json:"text"`
	Labels map[string]string  `json:"labels"`
	Values map[string]float64 `json:"values"`
}

type result struct {
	Name   string `json:"name"`
	Output string `json:"output"`
	Error  string `json:"error"`
}

// ---- rule templates (Grafana state/template) ----

type Labels map[string]string

func (l Labels) String() string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ", ")
}

type Value struct {
	Labels Labels
	Value  float64
}

// String as in Grafana: two significant digits.
func (v Value) String() string {
	abs := math.Abs(v.Value)
	if abs == 0 {
		return "0"
	}
	precision := 2 - (int(math.Floor(math.Log10(abs))) + 1)
	if precision < 0 {
		precision = 0
	}
	return strconv.FormatFloat(v.Value, 'f', precision, 64)
}

type ruleData struct {
	Labels Labels
	Values map[string]Value
	Value  string
}

func toFloat(i interface{}) (float64, error) {
	switch v := i.(type) {
	case float64:
		return v, nil
	case string:
		return strconv.ParseFloat(v, 64)
	case int:
		return float64(v), nil
	case Value:
		return v.Value, nil
	default:
		return 0, fmt.Errorf("can't convert %T to float", v)
	}
}

func humanize(i interface{}) (string, error) {
	v, err := toFloat(i)
	if err != nil {
		return "", err
	}
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Sprintf("%.4g", v), nil
	}
	prefixes, scale := []string{"k", "M", "G", "T", "P", "E", "Z", "Y"}, 1000.0
	prefix := ""
	if math.Abs(v) >= 1 {
		for _, p := range prefixes {
			if math.Abs(v) < scale {
				break
			}
			prefix, v = p, v/scale
		}
		return fmt.Sprintf("%.4g%s", v, prefix), nil
	}
	for _, p := range []string{"m", "u", "n", "p", "f", "a", "z", "y"} {
		if math.Abs(v) >= 1 {
			break
		}
		prefix, v = p, v*1000
	}
	return fmt.Sprintf("%.4g%s", v, prefix), nil
}

func humanizePercentage(i interface{}) (string, error) {
	v, err := toFloat(i)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%.4g%%", v*100), nil
}

func humanizeDuration(i interface{}) (string, error) {
	v, err := toFloat(i)
	if err != nil {
		return "", err
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Sprintf("%.4g", v), nil
	}
	if v == 0 {
		return fmt.Sprintf("%.4gs", v), nil
	}
	if math.Abs(v) >= 1 {
		sign := ""
		if v < 0 {
			sign, v = "-", -v
		}
		seconds, minutes := int64(v)%60, (int64(v)/60)%60
		hours, days := (int64(v)/60/60)%24, int64(v)/60/60/24
		switch {
		case days != 0:
			return fmt.Sprintf("%s%dd %dh %dm %ds", sign, days, hours, minutes, seconds), nil
		case hours != 0:
			return fmt.Sprintf("%s%dh %dm %ds", sign, hours, minutes, seconds), nil
		case minutes != 0:
			return fmt.Sprintf("%s%dm %ds", sign, minutes, seconds), nil
		}
		return fmt.Sprintf("%s%.4gs", sign, v), nil
	}
	prefix := ""
	for _, p := range []string{"m", "u", "n", "p", "f", "a", "z", "y"} {
		if math.Abs(v) >= 1 {
			break
		}
		prefix, v = p, v*1000
	}
	return fmt.Sprintf("%.4g%ss", v, prefix), nil
}

func stubString(args ...interface{}) string { return fmt.Sprint(args...) }

type sample struct {
	Labels map[string]string
	Value  float64
}
type queryResult []*sample

func ruleFuncs() texttemplate.FuncMap {
	return texttemplate.FuncMap{
		// Prometheus template.NewTemplateExpander
		"query":    func(q string) (queryResult, error) { return nil, nil }, // a no-op in Grafana
		"first":    func(v queryResult) (*sample, error) { return nil, fmt.Errorf("first() on no elements") },
		"label":    func(label string, s *sample) string { return s.Labels[label] },
		"value":    func(s *sample) float64 { return s.Value },
		"strvalue": func(s *sample) string { return s.Labels["__value__"] },
		"args": func(args ...interface{}) map[string]interface{} {
			out := map[string]interface{}{}
			for i, a := range args {
				out[fmt.Sprintf("arg%d", i)] = a
			}
			return out
		},
		"reReplaceAll": func(pattern, repl, text string) string {
			return regexp.MustCompile(pattern).ReplaceAllString(text, repl)
		},
		"safeHtml":           func(text string) template.HTML { return template.HTML(text) },
		"match":              regexp.MatchString,
		"title":              strings.Title, //nolint
		"toUpper":            strings.ToUpper,
		"toLower":            strings.ToLower,
		"sortByLabel":        func(label string, v queryResult) queryResult { return v },
		"humanize":           humanize,
		"humanize1024":       func(i interface{}) (string, error) { return humanize(i) },
		"humanizeDuration":   humanizeDuration,
		"humanizePercentage": humanizePercentage,
		"humanizeTimestamp":  func(i interface{}) (string, error) { return humanize(i) },
		"toTime":             func(i interface{}) (time.Time, error) { return time.Unix(0, 0), nil },
		"toDuration":         func(i interface{}) (time.Duration, error) { return 0, nil },
		"parseDuration":      func(d string) (float64, error) { return 0, nil },
		"now":                func() float64 { return 0 },
		"pathPrefix":         func() string { return "" },
		"externalURL":        func() string { return "http://grafana.example:3000/" },
		"stripPort":          func(hostPort string) string { return hostPort },
		"stripDomain":        func(hostPort string) string { return hostPort },
		"urlUnescape":        url.QueryUnescape,
		// Grafana's defaultFuncs (funcs.go); graphLink and tableLink replace Prometheus' ones
		"filterLabels":     func(m Labels, match string) Labels { return m },
		"filterLabelsRe":   func(m Labels, pattern string) Labels { return m },
		"removeLabels":     func(m Labels, match string) Labels { return m },
		"removeLabelsRe":   func(m Labels, pattern string) Labels { return m },
		"graphLink":        func(data string) string { return stubString(data) },
		"tableLink":        func(data string) string { return stubString(data) },
		"mergeLabelValues": func(values map[string]Value) Labels { return Labels{} },
	}
}

func expandRule(r request) (string, error) {
	text := "{{- $labels := .Labels -}}{{- $values := .Values -}}{{- $value := .Value -}}" + r.Text
	values := map[string]Value{}
	for refID, v := range r.Values {
		values[refID] = Value{Labels: r.Labels, Value: v}
	}
	data := ruleData{Labels: r.Labels, Values: values, Value: "[ var='B' labels={} value=1 ]"}
	tmpl, err := texttemplate.New("__alert_" + r.Name).Funcs(ruleFuncs()).Option("missingkey=invalid").Parse(text)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		return "", err
	}
	return strings.ReplaceAll(out.String(), "<no value>", "[no value]"), nil
}

// ---- notification templates (Alertmanager template.Data, extended by Grafana) ----

type KV map[string]string

type Pair struct{ Name, Value string }
type Pairs []Pair

func (kv KV) SortedPairs() Pairs {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make(Pairs, 0, len(keys))
	for _, k := range keys {
		out = append(out, Pair{k, kv[k]})
	}
	return out
}

func (kv KV) Names() []string {
	var out []string
	for _, p := range kv.SortedPairs() {
		out = append(out, p.Name)
	}
	return out
}

func (kv KV) Values() []string {
	var out []string
	for _, p := range kv.SortedPairs() {
		out = append(out, p.Value)
	}
	return out
}

func (kv KV) Remove(keys []string) KV {
	out := KV{}
	for k, v := range kv {
		out[k] = v
	}
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

type Alert struct {
	Status       string
	Labels       KV
	Annotations  KV
	StartsAt     time.Time
	EndsAt       time.Time
	GeneratorURL string
	Fingerprint  string
	DashboardURL string
	PanelURL     string
	SilenceURL   string
	Values       map[string]float64
	ValueString  string
	OrgID        *int64
}

type Alerts []Alert

func (as Alerts) Firing() []Alert   { return as.with("firing") }
func (as Alerts) Resolved() []Alert { return as.with("resolved") }
func (as Alerts) with(status string) []Alert {
	var out []Alert
	for _, a := range as {
		if a.Status == status {
			out = append(out, a)
		}
	}
	return out
}

type notificationData struct {
	Receiver          string
	Status            string
	Alerts            Alerts
	GroupLabels       KV
	CommonLabels      KV
	CommonAnnotations KV
	ExternalURL       string
}

func notificationFuncs() texttemplate.FuncMap {
	// Alertmanager template.DefaultFuncs
	return texttemplate.FuncMap{
		"toUpper":     strings.ToUpper,
		"toLower":     strings.ToLower,
		"title":       strings.Title, //nolint
		"trimSpace":   strings.TrimSpace,
		"join":        func(sep string, s []string) string { return strings.Join(s, sep) },
		"match":       regexp.MatchString,
		"safeHtml":    func(text string) template.HTML { return template.HTML(text) },
		"safeUrl":     func(text string) template.URL { return template.URL(text) },
		"urlUnescape": url.QueryUnescape,
		"reReplaceAll": func(pattern, repl, text string) string {
			return regexp.MustCompile(pattern).ReplaceAllString(text, repl)
		},
		"stringSlice":      func(s ...string) []string { return s },
		"date":             func(fmt string, t time.Time) string { return t.Format(fmt) },
		"tz":               func(name string, t time.Time) (time.Time, error) { return t, nil },
		"since":            time.Since,
		"humanizeDuration": humanizeDuration,
	}
}

func expandNotification(r request) (string, error) {
	alert := Alert{
		Status: "firing", Labels: KV(r.Labels), Annotations: KV{"summary": "sample summary"},
		StartsAt: time.Unix(1700000000, 0), Values: r.Values, ValueString: "[ var='B' value=1 ]",
	}
	resolved := alert
	resolved.Status = "resolved"
	data := notificationData{
		Receiver: "smartcity-operators", Status: "firing", Alerts: Alerts{alert, resolved},
		GroupLabels: KV(r.Labels), CommonLabels: KV(r.Labels), CommonAnnotations: KV{}, ExternalURL: "http://grafana.example:3000/",
	}
	tmpl, err := texttemplate.New(r.Name).Funcs(notificationFuncs()).Option("missingkey=zero").Parse(r.Text)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		return "", err
	}
	return out.String(), nil
}

func main() {
	var requests []request
	if err := json.NewDecoder(os.Stdin).Decode(&requests); err != nil {
		fmt.Fprintln(os.Stderr, "expand: bad input:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(requests))
	for _, r := range requests {
		var out string
		var err error
		switch r.Kind {
		case "rule":
			out, err = expandRule(r)
		case "notification":
			out, err = expandNotification(r)
		default:
			err = fmt.Errorf("unknown kind %q", r.Kind)
		}
		res := result{Name: r.Name, Output: out}
		if err != nil {
			res.Error = err.Error()
		}
		results = append(results, res)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		os.Exit(2)
	}
}
