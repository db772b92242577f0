package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// loadChartMeta reads Chart.yaml into the capitalised keys templates see (.Chart.Name,
// .Chart.Version, .Chart.AppVersion, ...), as Helm does.
func loadChartMeta(chartDir string) (map[string]interface{}, error) {
	raw := map[string]interface{}{}
	if err := readYAMLFile(filepath.Join(chartDir, "Chart.yaml"), &raw); err != nil {
		return nil, err
	}
	for _, key := range []string{"apiVersion", "name", "version"} {
		if _, ok := raw[key]; !ok {
			return nil, fmt.Errorf("Chart.yaml: missing required key %q", key)
		}
	}
	meta := map[string]interface{}{}
	for k, v := range raw {
		meta[strings.ToUpper(k[:1])+k[1:]] = v
	}
	return meta, nil
}

// loadValues merges the chart's values.yaml with each extra file in order, with Helm's
// rules: maps merge key by key, anything else is replaced, and a null removes the key.
func loadValues(chartDir string, extra []string) (map[string]interface{}, error) {
	values := map[string]interface{}{}
	if err := readYAMLFile(filepath.Join(chartDir, "values.yaml"), &values); err != nil {
		return nil, err
	}
	for _, path := range extra {
		over := map[string]interface{}{}
		if err := readYAMLFile(path, &over); err != nil {
			return nil, err
		}
		mergeValues(values, over)
	}
	return values, nil
}

func mergeValues(dst, src map[string]interface{}) {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		srcMap, srcIsMap := v.(map[string]interface{})
		dstMap, dstIsMap := dst[k].(map[string]interface{})
		if srcIsMap && dstIsMap {
			mergeValues(dstMap, srcMap)
			continue
		}
		dst[k] = v
	}
}

func readYAMLFile(path string, into *map[string]interface{}) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	if *into == nil {
		*into = map[string]interface{}{}
	}
	return nil
}

// files is .Files: read access to the chart's own files, never outside the chart.
type files struct{ root string }

func (f files) Get(name string) (string, error) {
	clean := filepath.Clean(name)
	if filepath.IsAbs(clean) || strings.HasPrefix(clean, "..") {
		return "", fmt.Errorf(".Files.Get %q: path leaves the chart", name)
	}
	data, err := os.ReadFile(filepath.Join(f.root, clean))
	if err != nil {
		// Helm returns "" for a missing file; failing is kinder to whoever mistyped the path.
		return "", fmt.Errorf(".Files.Get %q: %v", name, err)
	}
	return string(data), nil
}

type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func defaultCapabilities() map[string]interface{} {
	return map[string]interface{}{
		"KubeVersion": map[string]interface{}{
			"Version": "v1.29.0", "Major": "1", "Minor": "29", "GitVersion": "v1.29.0",
		},
		"APIVersions": apiVersions{"v1", "apps/v1"},
	}
}
