package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/yaml"

	"github.com/outbox-relay/outbox-relay/relay"
)

// kubeDir holds the Kubernetes manifests, from the repository's top.
const kubeDir = "deploy/kubernetes"

// relayFacts is what the manifests must agree with, read from the code.
type relayFacts struct {
	env         map[string]bool // every OUTBOX_* variable
	mux         *http.ServeMux  // what `outbox-relay run` serves
	metricsPort int             // OUTBOX_METRICS_ADDR's default port
	metrics     map[string]bool // every series name /metrics exports
	shutdown    time.Duration   // OUTBOX_SHUTDOWN_TIMEOUT's default
}

func gatherRelayFacts(t *testing.T) relayFacts {
	t.Helper()
	f := relayFacts{env: map[string]bool{}, metrics: map[string]bool{}}
	ct := reflect.TypeOf(config{})
	for i := range ct.NumField() {
		if k := ct.Field(i).Tag.Get("envconfig"); k != "" {
			f.env[envPrefix+"_"+k] = true
		}
	}
	cfg := defaultConfig()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	f.shutdown = cfg.ShutdownTimeout
	// The registry and mux as cmdRun builds them.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rcfg := cfg.relayConfig(nil)
	rcfg.Registerer = reg
	r, err := relay.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	f.mux = newMux(reg, r)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		suffixes := map[dto.MetricType][]string{dto.MetricType_HISTOGRAM: {"_bucket", "_sum", "_count"}, dto.MetricType_SUMMARY: {"_sum", "_count"}}
		for _, s := range append([]string{""}, suffixes[mf.GetType()]...) {
			f.metrics[mf.GetName()+s] = true
		}
	}
	_, port, _ := net.SplitHostPort(metricsAddrDefault)
	f.metricsPort, _ = strconv.Atoi(port)
	return f
}

// serves reports whether the relay answers GET path.
func (f relayFacts) serves(p string) bool {
	_, pattern := f.mux.Handler(httptest.NewRequest(http.MethodGet, p, nil))
	return pattern != ""
}

// deployFiles reads the files the checks look at, by their paths from the
// repository's top, so that a test can break a copy of them.
func deployFiles(t *testing.T) fstest.MapFS {
	t.Helper()
	root, files := os.DirFS(repoRoot), fstest.MapFS{}
	err := fs.WalkDir(root, kubeDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files[p] = &fstest.MapFile{}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	files["deploy/prometheus/alerts.yml"], files["Dockerfile"] = &fstest.MapFile{}, &fstest.MapFile{}
	for p := range files {
		if files[p].Data, err = fs.ReadFile(root, p); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// checkDeploy returns what is wrong with the manifests in fsys (see
// deployFiles) given what the relay serves and reads.
func checkDeploy(fsys fs.FS, f relayFacts) []error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	df, _ := fs.ReadFile(fsys, "Dockerfile")
	uid, gid, err := imageUser(parseDockerfile(string(df)))
	if err != nil {
		return []error{fmt.Errorf("Dockerfile: %w", err)}
	}
	b, _ := fs.ReadFile(fsys, "deploy/prometheus/alerts.yml")
	alerts, err := yamlDocs(b)
	if err != nil || len(alerts) != 1 {
		return []error{fmt.Errorf("deploy/prometheus/alerts.yml: want one document: %v", err)}
	}
	for _, g := range list(alerts[0]["groups"]) {
		for _, r := range list(field(g, "rules")) {
			for _, m := range exprMetrics(str(field(r, "expr"))) {
				if !f.metrics[m] && m != "up" {
					fail("alert %v: the relay exports no metric %s", field(r, "alert"), m)
				}
			}
		}
	}
	forms := map[string]bool{}
	err = fs.WalkDir(fsys, kubeDir, func(dir string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		entries, _ := fs.ReadDir(fsys, dir)
		unlisted := map[string]bool{}
		for _, e := range entries {
			if n := e.Name(); !e.IsDir() && (path.Ext(n) == ".yaml" || path.Ext(n) == ".yml") {
				b, _ := fs.ReadFile(fsys, path.Join(dir, n))
				docs, err := yamlDocs(b)
				if err != nil {
					fail("%s/%s: %v", dir, n, err)
				}
				for _, doc := range docs {
					if str(doc["apiVersion"]) == "" || str(doc["kind"]) == "" {
						fail("%s/%s: a document without apiVersion and kind", dir, n)
					}
				}
				unlisted[n] = n != "kustomization.yaml"
			}
		}
		if _, ok := unlisted["kustomization.yaml"]; !ok {
			if len(unlisted) > 0 {
				fail("%s: manifests without a kustomization.yaml", dir)
			}
			return nil
		}
		kb, _ := fs.ReadFile(fsys, path.Join(dir, "kustomization.yaml"))
		var k struct{ Resources []string }
		_ = yaml.Unmarshal(kb, &k)
		for _, r := range k.Resources {
			delete(unlisted, r)
		}
		for n, u := range unlisted {
			if u {
				fail("%s/%s: not a resource of its kustomization.yaml", dir, n)
			}
		}
		objs, err := kustomize(fsys, dir)
		if err != nil {
			fail("%v", err)
			return nil
		}
		errs = append(errs, checkObjects(dir, objs, alerts[0]["groups"], f, uid, gid, forms)...)
		return nil
	})
	if err != nil {
		fail("%v", err)
	}
	if !forms["native"] || !forms["classic"] {
		fail("want the relay both as a native sidecar and as a classic container, got %v", forms)
	}
	return errs
}

// checkObjects checks what one kustomization renders, and notes in forms
// the forms the relay takes in it ("native", "classic").
func checkObjects(dir string, objs []obj, groups any, f relayFacts, uid, gid int, forms map[string]bool) []error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(dir+": "+format, a...)) }
	kinds := map[string]int{}
	relayPorts := map[string][]string{} // pod labels -> named metrics ports of the relay
	for _, o := range objs {
		kind := str(o["kind"])
		kinds[kind]++
		switch kind {
		case "Deployment":
			where := "Deployment " + str(field(o, "metadata", "name"))
			spec, _ := field(o, "spec", "template", "spec").(obj)
			form, ports, perrs := checkPod(where, spec, f, uid, gid)
			for _, err := range perrs {
				errs = append(errs, fmt.Errorf("%s: %w", dir, err))
			}
			forms[form] = true
			b, _ := json.Marshal(field(o, "spec", "template", "metadata", "labels"))
			relayPorts[string(b)] = ports
		case "PodMonitor":
			for _, ep := range list(field(o, "spec", "podMetricsEndpoints")) {
				if p := cmp.Or(str(field(ep, "path")), "/metrics"); p != "/metrics" || !f.serves(p) {
					fail("PodMonitor scrapes %s, want /metrics", p)
				}
				b, _ := json.Marshal(field(o, "spec", "selector", "matchLabels"))
				if !slices.Contains(relayPorts[string(b)], str(field(ep, "port"))) {
					fail("PodMonitor port %v: no relay metrics port of that name in pods labelled %s", field(ep, "port"), b)
				}
			}
		case "PrometheusRule":
			if !reflect.DeepEqual(field(o, "spec", "groups"), groups) {
				fail("PrometheusRule's groups differ from deploy/prometheus/alerts.yml's: copy them again")
			}
		}
	}
	for _, k := range []string{"Deployment", "PodMonitor", "PrometheusRule"} {
		if kinds[k] != 1 {
			fail("%d %s, want 1", kinds[k], k)
		}
	}
	return errs
}

var (
	promStrings    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\{[^}]*\}|\[[^\]]*\]`)
	promLabelLists = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promNumbers    = regexp.MustCompile(`\b\d+(?:\.\d+)?(?:[eE][+-]?\d+|ms|[smhdwy])?\b`)
	promNames      = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*\s*\(?`)
	promKeywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"group_left": true, "group_right": true, "inf": true, "nan": true}
)

// exprMetrics returns the metric names a PromQL expression selects: its
// names less functions, keywords, label names, strings and numbers.
func exprMetrics(expr string) []string {
	s := promStrings.ReplaceAllString(expr, " ")
	s = promLabelLists.ReplaceAllString(s, " ")
	s = promNumbers.ReplaceAllString(s, " ")
	var names []string
	for _, m := range promNames.FindAllString(s, -1) {
		if name := strings.TrimSpace(m); !strings.HasSuffix(name, "(") && !promKeywords[strings.ToLower(name)] {
			names = append(names, name)
		}
	}
	return names
}

func TestManifests(t *testing.T) {
	t.Parallel()
	for _, err := range checkDeploy(deployFiles(t), gatherRelayFacts(t)) {
		t.Error(err)
	}
}

// Each check of checkDeploy fails on manifests broken its way.
func TestManifestChecksCatchBreakage(t *testing.T) {
	t.Parallel()
	files, facts := deployFiles(t), gatherRelayFacts(t)
	const (
		deployment = kubeDir + "/base/deployment.yaml"
		rule       = kubeDir + "/base/prometheusrule.yaml"
		alerts     = "deploy/prometheus/alerts.yml"
	)
	type edit struct {
		file, old, new string
		nth            int // which occurrence of old, from 1; 0 means every one
	}
	for _, tc := range []struct {
		name  string
		edits []edit
	}{
		{"unknown variable", []edit{{deployment, "OUTBOX_LOG_FORMAT", "OUTBOX_LOGFORMAT", 2}}},
		{"liveness path not served", []edit{{deployment, "path: /healthz", "path: /health", 1}}},
		{"readiness on liveness", []edit{{deployment, "path: /readyz", "path: /healthz", 1}}},
		{"probe port unnamed", []edit{{deployment, "port: outbox-metrics}", "port: 9464}", 1}}},
		{"probe port not metrics", []edit{{deployment, "containerPort: 9464", "containerPort: 8080", 1}}},
		{"pod may run as root", []edit{{deployment, "runAsNonRoot: true", "runAsNonRoot: false", 1}}},
		{"pod seccomp", []edit{{deployment, "type: RuntimeDefault", "type: Unconfined", 1}}},
		{"migrate privilege escalation", []edit{{deployment, "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", 1}}},
		{"relay writable root", []edit{{deployment, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", 2}}},
		{"relay capabilities", []edit{{deployment, "drop: [ALL]", "drop: [NET_RAW]", 2}}},
		{"relay not the image's user", []edit{{deployment, "runAsUser: 65532", "runAsUser: 1000", 3}}},
		{"image's user moved", []edit{{"Dockerfile", "USER 65532:65532", "USER 1001:1001", 1}}},
		{"app container seccomp", []edit{{deployment, "type: RuntimeDefault", "type: Unconfined", 4}}},
		{"no resources", []edit{{deployment, "limits: {memory: 128Mi}", "", 1}}},
		{"sidecar without restartPolicy", []edit{{deployment, "restartPolicy: Always", "", 1}}},
		{"database URL not from a Secret", []edit{{deployment, "valueFrom: {secretKeyRef: {name: my-service-outbox-db, key: url}}", "value: postgres://outbox:pw@db/app", 2}}},
		{"password in the URL", []edit{{deployment, "amqp://my-service@", "amqp://my-service:pw@", 1}}},
		{"password file not mounted", []edit{{deployment, "/var/run/secrets/outbox-relay/amqp/password", "/etc/amqp/password", 1}}},
		{"grace shorter than the shutdown", []edit{{deployment, "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", 1}}},
		{"pod monitor port", []edit{{kubeDir + "/base/podmonitor.yaml", "port: outbox-metrics", "port: metrics", 1}}},
		{"missing manifest", []edit{{kubeDir + "/base/kustomization.yaml", "  - podmonitor.yaml\n", "  - podmonitor.yaml\n  - service.yaml\n", 1}}},
		{"unlisted manifest", []edit{{kubeDir + "/base/kustomization.yaml", "  - podmonitor.yaml\n", "", 1}}},
		{"rules drift", []edit{{rule, "> 60", "> 61", 1}}},
		{"unknown metric in an alert", []edit{{rule, "outbox_lag_seconds", "outbox_lag_secs", 0}, {alerts, "outbox_lag_seconds", "outbox_lag_secs", 0}}},
		{"classic moves migrate", []edit{{kubeDir + "/classic/kustomization.yaml", "initContainers/1", "initContainers/0", 1}}},
		{"no classic form", []edit{{kubeDir + "/classic/kustomization.yaml", "- op: move", "- op: remove", 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			broken := fstest.MapFS{}
			for p, f := range files {
				broken[p] = &fstest.MapFile{Data: f.Data}
			}
			for _, e := range tc.edits {
				text := string(broken[e.file].Data)
				if strings.Count(text, e.old) < max(e.nth, 1) {
					t.Fatalf("%s has no occurrence %d of %q to break: update this case", e.file, e.nth, e.old)
				}
				if e.nth == 0 {
					text = strings.ReplaceAll(text, e.old, e.new)
				} else {
					at := 0
					for range e.nth - 1 {
						at += strings.Index(text[at:], e.old) + len(e.old)
					}
					text = text[:at] + strings.Replace(text[at:], e.old, e.new, 1)
				}
				broken[e.file].Data = []byte(text)
			}
			if errs := checkDeploy(broken, facts); len(errs) == 0 {
				t.Errorf("%+v: no check failed", tc.edits)
			} else {
				t.Logf("caught: %v", errs[0])
			}
		})
	}
}
