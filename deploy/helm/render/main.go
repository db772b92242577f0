// Command render renders a Helm chart's templates without Helm and without a cluster, so the
// chart can be tested on a machine that has only Debian's Go packages (Helm is not in
// Debian 12). It implements the part of Helm the lazymig chart uses: text/template with
// sprig's functions, include, tpl, required, toYaml, fromYaml, toJson, .Values (values.yaml
// deep-merged with -f files, as Helm merges them), .Release, .Chart, .Files.Get,
// .Capabilities and .Template. Every rendered document is parsed as YAML, so a template
// that produces broken YAML fails here with the template's name.
//
// Usage: render -chart DIR [-f values.yaml ...] [-name RELEASE] [-namespace NS] [-notes]
// Writes the manifests as one multi-document YAML stream on stdout (NOTES.txt with -notes).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"gopkg.in/yaml.v3"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

func main() {
	chartDir := flag.String("chart", "", "chart directory (holds Chart.yaml)")
	release := flag.String("name", "lazymig", "release name")
	namespace := flag.String("namespace", "lazymig", "release namespace")
	notes := flag.Bool("notes", false, "print the rendered NOTES.txt instead of the manifests")
	var extra valueFiles
	flag.Var(&extra, "f", "values file merged over values.yaml (repeatable)")
	flag.Parse()
	if *chartDir == "" {
		fmt.Fprintln(os.Stderr, "render: -chart DIR is required")
		os.Exit(2)
	}
	out, err := renderChart(*chartDir, extra, *release, *namespace, *notes)
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

// renderChart renders every template of the chart (or only NOTES.txt) and returns the
// manifests in file-name order, each headed by "# Source:" as `helm template` does.
func renderChart(chartDir string, valueFiles []string, release, namespace string, notesOnly bool) (string, error) {
	chart, err := loadChartMeta(chartDir)
	if err != nil {
		return "", err
	}
	values, err := loadValues(chartDir, valueFiles)
	if err != nil {
		return "", err
	}
	chartName, _ := chart["Name"].(string)
	tmpl, names, err := parseTemplates(chartDir, chartName)
	if err != nil {
		return "", err
	}
	top := map[string]interface{}{
		"Values":       values,
		"Chart":        chart,
		"Files":        files{root: chartDir},
		"Capabilities": defaultCapabilities(),
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
	}
	var b strings.Builder
	for _, name := range names {
		base := filepath.Base(name)
		isNotes := base == "NOTES.txt"
		if strings.HasPrefix(base, "_") || isNotes != notesOnly {
			continue
		}
		top["Template"] = map[string]interface{}{
			"Name": name, "BasePath": chartName + "/templates",
		}
		text, err := execute(tmpl, name, top)
		if err != nil {
			return "", err
		}
		if notesOnly {
			b.WriteString(text)
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		if err := checkYAML(name, text); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", name, strings.TrimRight(text, "\n"))
	}
	return b.String(), nil
}

func execute(tmpl *template.Template, name string, data interface{}) (string, error) {
	var buf bytes.Buffer
	if err := tmpl.ExecuteTemplate(&buf, name, data); err != nil {
		return "", err
	}
	// Helm renders a missing value as empty, not as text/template's "<no value>".
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

// checkYAML parses each document of one template's output, so broken indentation is
// reported against the template that produced it rather than by a later consumer.
func checkYAML(name, text string) error {
	dec := yaml.NewDecoder(strings.NewReader(text))
	for i := 0; ; i++ {
		var doc interface{}
		err := dec.Decode(&doc)
		if err != nil {
			if err.Error() == "EOF" {
				return nil
			}
			return fmt.Errorf("%s: document %d is not valid YAML: %v\n%s", name, i, err, numbered(text))
		}
	}
}

func numbered(text string) string {
	var b strings.Builder
	for i, line := range strings.Split(text, "\n") {
		fmt.Fprintf(&b, "%4d | %s\n", i+1, line)
	}
	return b.String()
}

// parseTemplates loads templates/ into one template set named as Helm names them
// ("<chart>/templates/<file>") so include and .Template.Name behave the same.
func parseTemplates(chartDir, chartName string) (*template.Template, []string, error) {
	root := template.New("chart").Option("missingkey=zero")
	root.Funcs(funcMap(root))
	dir := filepath.Join(chartDir, "templates")
	var names []string
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		name := chartName + "/templates/" + filepath.ToSlash(rel)
		content, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := root.New(name).Parse(string(content)); err != nil {
			return err
		}
		names = append(names, name)
		return nil
	})
	sort.Strings(names)
	return root, names, err
}

// funcMap is sprig's text functions plus the ones Helm adds. As in Helm, env and
// expandenv are removed: a chart must not depend on the renderer's environment.
func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = toYaml
	f["fromYaml"] = fromYaml
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, fmt.Errorf("required: %s", msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, fmt.Errorf("required: %s", msg)
		}
		return v, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return strings.ReplaceAll(buf.String(), "<no value>", ""), err
	}
	f["lookup"] = func(string, string, string, string) map[string]interface{} {
		return map[string]interface{}{} // no cluster: Helm's template mode returns empty too
	}
	return f
}

func toYaml(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func fromYaml(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}
