package main

import (
	"fmt"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// checkPod checks a pod spec and returns the relay's form and the names of
// its metrics ports.
func checkPod(where string, spec obj, f relayFacts, uid, gid int) (form string, ports []string, errs []error) {
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(where+": "+format, a...)) }
	checkSecurityContext(field(spec, "securityContext"), false, -1, -1, func(s string) { fail("pod securityContext: %s", s) })
	secretMounts := map[string]bool{}
	for _, v := range list(spec["volumes"]) {
		secretMounts[str(field(v, "name"))] = field(v, "secret") != nil
	}
	graceSeconds, _ := field(spec, "terminationGracePeriodSeconds").(float64)
	grace := time.Duration(graceSeconds) * time.Second
	migrateAt, relayAt := -1, -1
	for _, kind := range []string{"initContainers", "containers"} {
		for i, x := range list(spec[kind]) {
			c, _ := x.(obj)
			cfail := func(format string, a ...any) { fail("%s %s: "+format, append([]any{kind, c["name"]}, a...)...) }
			relayImage := strings.HasPrefix(path.Base(str(c["image"])), "outbox-relay")
			wantUID, wantGID := -1, -1
			if relayImage {
				wantUID, wantGID = uid, gid
			}
			checkSecurityContext(c["securityContext"], true, wantUID, wantGID, func(s string) { cfail("securityContext: %s", s) })
			for _, r := range []string{"requests.cpu", "requests.memory", "limits.memory"} {
				if field(c, append([]string{"resources"}, strings.Split(r, ".")...)...) == nil {
					cfail("no resources.%s", r)
				}
			}
			shutdown := f.shutdown
			for _, e := range list(c["env"]) {
				name, value := str(field(e, "name")), str(field(e, "value"))
				switch {
				case strings.HasPrefix(name, envPrefix+"_") && !f.env[name]:
					cfail("%s is not a variable of the relay", name)
				case name == "OUTBOX_DATABASE_URL" && field(e, "valueFrom", "secretKeyRef", "name") == nil:
					cfail("OUTBOX_DATABASE_URL must come from a Secret (secretKeyRef)")
				case name == "OUTBOX_AMQP_URL":
					for _, s := range strings.Split(value, ",") {
						if u, err := url.Parse(s); err != nil || u.User == nil || func() bool { _, ok := u.User.Password(); return ok }() {
							cfail("OUTBOX_AMQP_URL: want a user and no password in each URL (the password comes from OUTBOX_AMQP_PASSWORD_FILE)")
						}
					}
				case name == "OUTBOX_AMQP_PASSWORD_FILE":
					mounted := false
					for _, m := range list(c["volumeMounts"]) {
						mounted = mounted || (path.Dir(value) == str(field(m, "mountPath")) && secretMounts[str(field(m, "name"))])
					}
					if !mounted {
						cfail("OUTBOX_AMQP_PASSWORD_FILE %s is not in a mounted Secret", value)
					}
				case name == "OUTBOX_SHUTDOWN_TIMEOUT":
					shutdown, _ = time.ParseDuration(value)
				}
			}
			if !relayImage {
				continue
			}
			if slices.Equal(list(c["args"]), []any{"migrate"}) {
				if kind != "initContainers" {
					cfail("migrate must be an init container")
				}
				migrateAt = i
				continue
			}
			if relayAt >= 0 {
				cfail("a second relay in the pod")
			}
			relayAt, form = i, map[string]string{"initContainers": "native", "containers": "classic"}[kind]
			if rp := str(c["restartPolicy"]); (form == "native") != (rp == "Always") {
				cfail("restartPolicy %q: a sidecar in initContainers needs Always, a container none", rp)
			}
			if grace <= shutdown {
				cfail("terminationGracePeriodSeconds %s, want more than OUTBOX_SHUTDOWN_TIMEOUT %s", grace, shutdown)
			}
			named := map[string]bool{}
			for _, p := range list(c["ports"]) {
				if field(p, "containerPort") == float64(f.metricsPort) && str(field(p, "name")) != "" {
					named[str(field(p, "name"))] = true
					ports = append(ports, str(field(p, "name")))
				}
			}
			for probe, want := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
				h := field(c, probe, "httpGet")
				if p := str(field(h, "path")); p != want || !f.serves(p) {
					cfail("%s path %q, want %s, served by the relay", probe, p, want)
				}
				if port, ok := field(h, "port").(string); !ok || !named[port] {
					cfail("%s port %v: want the name of the container port %d", probe, field(h, "port"), f.metricsPort)
				}
			}
		}
	}
	switch {
	case relayAt < 0:
		fail("no relay container (image outbox-relay, args [run])")
	case migrateAt < 0:
		fail("no migrate init container")
	case form == "native" && migrateAt > relayAt:
		fail("migrate must come before the relay sidecar")
	}
	return form, ports, errs
}

// checkSecurityContext reports (to fail) what keeps sc from the
// "restricted" Pod Security Standard, with readOnlyRootFilesystem too for a
// container. uid and gid, unless -1, are the user to run as; else any user
// but root.
func checkSecurityContext(sc any, container bool, uid, gid int, fail func(string)) {
	want := map[string]any{"runAsNonRoot": true, "seccompProfile.type": "RuntimeDefault"}
	if container {
		want["allowPrivilegeEscalation"], want["readOnlyRootFilesystem"] = false, true
		if !slices.Contains(list(field(sc, "capabilities", "drop")), any("ALL")) {
			fail("capabilities.drop lacks ALL")
		}
	}
	for k, v := range want {
		if got := field(sc, strings.Split(k, ".")...); got != v {
			fail(fmt.Sprintf("%s %v, want %v", k, got, v))
		}
	}
	for k, id := range map[string]int{"runAsUser": uid, "runAsGroup": gid} {
		got, ok := field(sc, k).(float64)
		if !ok || got == 0 || (id >= 0 && got != float64(id)) {
			fail(fmt.Sprintf("%s %v, want %s", k, field(sc, k), map[bool]string{true: strconv.Itoa(id), false: "a user other than root"}[id >= 0]))
		}
	}
}
