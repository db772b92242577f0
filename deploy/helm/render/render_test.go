package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestMergeValuesFollowsHelm(t *testing.T) {
	dst := map[string]interface{}{
		"a": map[string]interface{}{"x": 1, "y": 2},
		"b": "keep",
		"c": "drop",
		"l": []interface{}{1, 2},
	}
	src := map[string]interface{}{
		"a": map[string]interface{}{"y": 3, "z": 4},
		"c": nil,
		"l": []interface{}{9},
	}
	mergeValues(dst, src)
	want := map[string]interface{}{
		"a": map[string]interface{}{"x": 1, "y": 3, "z": 4},
		"b": "keep",
		"l": []interface{}{9},
	}
	if !reflect.DeepEqual(dst, want) {
		t.Fatalf("merged = %v, want %v", dst, want)
	}
}

// writeChart makes a one-template chart in a temporary directory.
func writeChart(t *testing.T, values, template string) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "templates"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "files"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "Chart.yaml"), []byte("apiVersion: v2\nname: t\nversion: 1.2.3\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "values.yaml"), []byte(values), 0o644))
	must(os.WriteFile(filepath.Join(dir, "files", "f.txt"), []byte("k: from-file\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "templates", "_h.tpl"), []byte(`{{- define "t.name" -}}{{ .Chart.Name }}-{{ .Chart.Version }}{{- end -}}`), 0o644))
	must(os.WriteFile(filepath.Join(dir, "templates", "cm.yaml"), []byte(template), 0o644))
	return dir
}

func TestRenderUsesHelmBuiltins(t *testing.T) {
	dir := writeChart(t, "n: 3\nm: {a: b}\n", `kind: ConfigMap
metadata:
  name: {{ include "t.name" . }}
  namespace: {{ .Release.Namespace }}
data:
  m: {{- toYaml .Values.m | nindent 4 }}
  f: {{ (fromYaml (.Files.Get "files/f.txt")).k }}
  tpl: {{ tpl "{{ .Values.n }}" . | quote }}
  missing: "{{ .Values.nothing }}"
`)
	out, err := renderChart(dir, nil, "rel", "ns", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: t-1.2.3", "namespace: ns", "    a: b", "f: from-file", `tpl: "3"`, `missing: ""`, "# Source: t/templates/cm.yaml"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "_h.tpl") {
		t.Errorf("a partial was rendered as a manifest:\n%s", out)
	}
}

func TestRenderFailsOnRequiredAndBrokenYAML(t *testing.T) {
	dir := writeChart(t, "", `x: {{ required "x.value is required" .Values.x }}`)
	if _, err := renderChart(dir, nil, "r", "n", false); err == nil || !strings.Contains(err.Error(), "x.value is required") {
		t.Fatalf("err = %v, want the required message", err)
	}
	dir = writeChart(t, "", "a: [unclosed\n")
	if _, err := renderChart(dir, nil, "r", "n", false); err == nil || !strings.Contains(err.Error(), "t/templates/cm.yaml") {
		t.Fatalf("err = %v, want a YAML error naming the template", err)
	}
}

func TestFilesGetStaysInsideTheChart(t *testing.T) {
	dir := writeChart(t, "", "a: 1\n")
	if _, err := (files{root: dir}).Get("../outside"); err == nil {
		t.Fatal("Files.Get read outside the chart")
	}
}
