package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// This file reads the Kubernetes manifests as kubectl would, for
// manifests_test.go to check what a cluster would be given.

type obj = map[string]any

// yamlDocs decodes every document of a YAML file (JSON types: numbers are
// float64).
func yamlDocs(b []byte) ([]obj, error) {
	var docs []obj
	for _, part := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var doc obj
		if err := yaml.Unmarshal([]byte(part), &doc); err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs, nil
}

// field walks nested maps by key; a missing key gives nil.
func field(v any, keys ...string) any {
	for _, k := range keys {
		m, _ := v.(obj)
		v = m[k]
	}
	return v
}

func list(v any) []any { l, _ := v.([]any); return l }
func str(v any) string { s, _ := v.(string); return s }

// kustomize renders the kustomization in dir as `kubectl apply -k` does, as
// far as these manifests use kustomize: resources (files and directories)
// and inline JSON 6902 patches. Images stay as written.
func kustomize(fsys fs.FS, dir string) ([]obj, error) {
	b, err := fs.ReadFile(fsys, path.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k struct {
		Resources []string
		Patches   []struct {
			Target struct{ Kind, Name string }
			Patch  string
		}
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	var objs []obj
	for _, r := range k.Resources {
		p := path.Join(dir, r)
		docs, err := kustomizeResource(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("%s: resource %s: %w", dir, r, err)
		}
		objs = append(objs, docs...)
	}
	for _, pt := range k.Patches {
		var ops []obj
		if err := yaml.Unmarshal([]byte(pt.Patch), &ops); err != nil || len(ops) == 0 {
			return nil, fmt.Errorf("%s: want an inline JSON 6902 patch: %v", dir, err)
		}
		hit := false
		for i, o := range objs {
			if o["kind"] == pt.Target.Kind && field(o, "metadata", "name") == pt.Target.Name {
				if objs[i], err = jsonPatch(o, ops); err != nil {
					return nil, fmt.Errorf("%s: patch %s %s: %w", dir, pt.Target.Kind, pt.Target.Name, err)
				}
				hit = true
			}
		}
		if !hit {
			return nil, fmt.Errorf("%s: no %s %s to patch", dir, pt.Target.Kind, pt.Target.Name)
		}
	}
	return objs, nil
}

// kustomizeResource reads a resource of a kustomization: a directory with
// its own kustomization, or a file of manifests.
func kustomizeResource(fsys fs.FS, p string) ([]obj, error) {
	if fi, err := fs.Stat(fsys, p); err == nil && fi.IsDir() {
		return kustomize(fsys, p)
	}
	b, err := fs.ReadFile(fsys, p)
	if err != nil {
		return nil, err
	}
	return yamlDocs(b)
}

// jsonPatch applies RFC 6902 add, remove and move operations to a copy of doc.
func jsonPatch(doc obj, ops []obj) (obj, error) {
	b, _ := json.Marshal(doc)
	var root any
	_ = json.Unmarshal(b, &root)
	var err error
	for _, op := range ops {
		var v any
		switch op["op"] {
		case "add":
			root, _, err = patchAt(root, str(op["path"]), op["value"], true)
		case "remove":
			root, _, err = patchAt(root, str(op["path"]), nil, false)
		case "move":
			if root, v, err = patchAt(root, str(op["from"]), nil, false); err == nil {
				root, _, err = patchAt(root, str(op["path"]), v, true)
			}
		default:
			err = fmt.Errorf("op %v: this test knows add, remove and move", op["op"])
		}
		if err != nil {
			return nil, err
		}
	}
	return root.(obj), nil
}

// patchAt removes what the JSON pointer p points at and returns it, or with
// add inserts v there. It returns the new node.
func patchAt(node any, p string, v any, add bool) (any, any, error) {
	key, rest, _ := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	if rest != "" {
		rest = "/" + rest
	}
	switch n := node.(type) {
	case obj:
		if rest == "" && add {
			n[key] = v
			return n, nil, nil
		}
		child, ok := n[key]
		if !ok {
			return n, nil, fmt.Errorf("%s: no %q", p, key)
		}
		if rest == "" {
			delete(n, key)
			return n, child, nil
		}
		c, out, err := patchAt(child, rest, v, add)
		n[key] = c
		return n, out, err
	case []any:
		i, err := strconv.Atoi(key)
		if err != nil || i < 0 || i > len(n) || (i == len(n) && !(add && rest == "")) {
			return n, nil, fmt.Errorf("%s: no index %q in a list of %d", p, key, len(n))
		}
		if rest == "" && add {
			return slices.Insert(n, i, v), nil, nil
		}
		if rest == "" {
			out := n[i]
			return slices.Delete(n, i, i+1), out, nil
		}
		c, out, err := patchAt(n[i], rest, v, add)
		n[i] = c
		return n, out, err
	}
	return node, nil, fmt.Errorf("%s: %q is not in an object or a list", p, key)
}
