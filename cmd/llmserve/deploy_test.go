package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/metrics"
	"github.com/llmserve/llmserve/server"
)

// The subset of Kubernetes objects the deployment tests check.
type k8sObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

type probe struct {
	HTTPGet *struct {
		Path string `json:"path"`
		Port any    `json:"port"`
	} `json:"httpGet"`
}

type container struct {
	Name  string   `json:"name"`
	Image string   `json:"image"`
	Args  []string `json:"args"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
	} `json:"ports"`
	ReadinessProbe *probe `json:"readinessProbe"`
	LivenessProbe  *probe `json:"livenessProbe"`
	StartupProbe   *probe `json:"startupProbe"`
	Lifecycle      *struct {
		PreStop *struct {
			Sleep *struct {
				Seconds int `json:"seconds"`
			} `json:"sleep"`
		} `json:"preStop"`
	} `json:"lifecycle"`
}

type deploymentSpec struct {
	Selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			TerminationGracePeriodSeconds int         `json:"terminationGracePeriodSeconds"`
			Containers                    []container `json:"containers"`
		} `json:"spec"`
	} `json:"template"`
}

type serviceSpec struct {
	Selector map[string]string `json:"selector"`
	Ports    []struct {
		Port       int `json:"port"`
		TargetPort any `json:"targetPort"`
	} `json:"ports"`
}

type inferencePoolSpec struct {
	Selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"selector"`
	TargetPorts []struct {
		Number int `json:"number"`
	} `json:"targetPorts"`
	EndpointPickerRef struct {
		Name string `json:"name"`
		Port struct {
			Number int `json:"number"`
		} `json:"port"`
	} `json:"endpointPickerRef"`
}

// loadManifests parses every document of deploy/kubernetes/*.yaml.
func loadManifests(t *testing.T) map[string][]k8sObject {
	t.Helper()
	files, err := filepath.Glob("../../deploy/kubernetes/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("manifests: %v %v", files, err)
	}
	out := map[string][]k8sObject{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			var o k8sObject
			if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if o.Kind == "" || o.APIVersion == "" || o.Metadata.Name == "" {
				t.Fatalf("%s document %d: no kind, apiVersion or name", f, i)
			}
			out[filepath.Base(f)] = append(out[filepath.Base(f)], o)
		}
	}
	return out
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func spec[T any](t *testing.T, o k8sObject) T {
	t.Helper()
	var s T
	if err := json.Unmarshal(o.Spec, &s); err != nil {
		t.Fatalf("%s %s: %v", o.Kind, o.Metadata.Name, err)
	}
	return s
}

// entrypoint reads the image's ENTRYPOINT from its Dockerfile.
func entrypoint(t *testing.T, image string) []string {
	t.Helper()
	file := "../../Dockerfile"
	if strings.Contains(image, "cuda") {
		file = "../../Dockerfile.cuda"
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ENTRYPOINT (\[.*\])$`).FindSubmatch(b)
	var ep []string
	if m == nil || json.Unmarshal(m[1], &ep) != nil || len(ep) == 0 {
		t.Fatalf("%s: no ENTRYPOINT", file)
	}
	return ep[1:] // the flags after the binary
}

// probeServer is a real server handler (no engine: loading) to check that
// probe paths are routes.
func probeServer(t *testing.T) http.Handler {
	t.Helper()
	s, err := server.New(server.Options{ModelNames: []string{"m"}, MaxModelLen: 16})
	if err != nil {
		t.Fatal(err)
	}
	return s.Handler()
}

func probeStatus(h http.Handler, path string) int {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code
}

func portOf(t *testing.T, c container, ref any) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == ref || float64(p.ContainerPort) == ref {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %v", c.Name, ref)
	return 0
}

// The manifests' llmserve containers carry flags our parser accepts,
// listen where their ports, probes and Services say, probe real routes,
// and leave time for the drain.
func TestDeployManifestsMatchTheServer(t *testing.T) {
	objs := loadManifests(t)
	h := probeServer(t)
	pods := 0
	for file, list := range objs {
		for _, o := range list {
			if o.Kind != "Deployment" {
				continue
			}
			d := spec[deploymentSpec](t, o)
			for k, v := range d.Selector.MatchLabels {
				if d.Template.Metadata.Labels[k] != v {
					t.Errorf("%s: selector %s=%s does not match the pod labels", file, k, v)
				}
			}
			for _, c := range d.Template.Spec.Containers {
				if !strings.HasPrefix(c.Image, "llmserve") {
					continue
				}
				pods++
				args := append(entrypoint(t, c.Image), c.Args...)
				cfg, err := parseFlags(args, noEnv, io.Discard)
				if err != nil {
					t.Errorf("%s: %q: %v", file, args, err)
					continue
				}
				if got := portOf(t, c, "http"); got != cfg.Port {
					t.Errorf("%s: containerPort %d, server listens on %d", file, got, cfg.Port)
				}
				for name, p := range map[string]*probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
					if p == nil || p.HTTPGet == nil {
						t.Errorf("%s: no %s probe", file, name)
						continue
					}
					if portOf(t, c, p.HTTPGet.Port) != cfg.Port {
						t.Errorf("%s: %s probe port %v", file, name, p.HTTPGet.Port)
					}
					code := probeStatus(h, p.HTTPGet.Path)
					switch {
					case code == http.StatusNotFound:
						t.Errorf("%s: %s probe %s is no route", file, name, p.HTTPGet.Path)
					case name == "readiness" && p.HTTPGet.Path != "/health":
						t.Errorf("%s: readiness on %s, want /health (503 while loading and draining)", file, p.HTTPGet.Path)
					case name != "readiness" && code != http.StatusOK:
						// Liveness must hold while the model loads.
						t.Errorf("%s: %s probe %s answers %d while loading", file, name, p.HTTPGet.Path, code)
					}
				}
				if name := "readiness"; probeStatus(h, c.ReadinessProbe.HTTPGet.Path) != http.StatusServiceUnavailable {
					t.Errorf("%s: %s probe passes before the model is loaded", file, name)
				}
				preStop := 0
				if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
					preStop = c.Lifecycle.PreStop.Sleep.Seconds
				} else {
					t.Errorf("%s: no preStop sleep", file)
				}
				grace := time.Duration(d.Template.Spec.TerminationGracePeriodSeconds) * time.Second
				if need := time.Duration(preStop)*time.Second + cfg.ShutdownTimeout; grace <= need {
					t.Errorf("%s: terminationGracePeriodSeconds %v does not cover preStop %ds + --shutdown-timeout %v", file, grace, preStop, cfg.ShutdownTimeout)
				}
			}
		}
		for _, o := range list {
			if o.Kind != "Service" || !strings.HasPrefix(o.Metadata.Name, "llmserve-") || strings.HasSuffix(o.Metadata.Name, "-epp") {
				continue
			}
			s := spec[serviceSpec](t, o)
			if len(s.Ports) == 0 || s.Ports[0].TargetPort != "http" {
				t.Errorf("%s: Service %s does not target the named port http: %+v", file, o.Metadata.Name, s.Ports)
			}
		}
	}
	if pods < 2 {
		t.Fatalf("found %d llmserve containers, want the GPU and CPU variants", pods)
	}
}

// The InferencePool selects the llmserve pods on their port, names its
// endpoint picker's Service, and the picker reads metrics we export.
func TestInferencePoolMatchesTheServer(t *testing.T) {
	objs := loadManifests(t)
	var pools []inferencePoolSpec
	services := map[string]serviceSpec{}
	var podLabels []map[string]string
	var podPorts []int
	var epp []container
	for _, list := range objs {
		for _, o := range list {
			switch o.Kind {
			case "InferencePool":
				pools = append(pools, spec[inferencePoolSpec](t, o))
			case "Service":
				services[o.Metadata.Name] = spec[serviceSpec](t, o)
			case "Deployment":
				d := spec[deploymentSpec](t, o)
				for _, c := range d.Template.Spec.Containers {
					if strings.HasPrefix(c.Image, "llmserve") {
						podLabels = append(podLabels, d.Template.Metadata.Labels)
						podPorts = append(podPorts, portOf(t, c, "http"))
					} else if strings.Contains(c.Image, "/epp") {
						epp = append(epp, c)
					}
				}
			}
		}
	}
	if len(pools) != 1 || len(epp) != 1 {
		t.Fatalf("%d pools, %d endpoint pickers", len(pools), len(epp))
	}
	pool := pools[0]
	selected := 0
	for i, labels := range podLabels {
		match := true
		for k, v := range pool.Selector.MatchLabels {
			match = match && labels[k] == v
		}
		if match {
			selected++
			if len(pool.TargetPorts) == 0 || pool.TargetPorts[0].Number != podPorts[i] {
				t.Errorf("pool targetPorts %+v, pods listen on %d", pool.TargetPorts, podPorts[i])
			}
		}
	}
	if selected == 0 {
		t.Error("the InferencePool selects no llmserve pod")
	}
	svc, ok := services[pool.EndpointPickerRef.Name]
	if !ok || len(svc.Ports) == 0 || svc.Ports[0].Port != pool.EndpointPickerRef.Port.Number {
		t.Errorf("endpointPickerRef %+v has no matching Service", pool.EndpointPickerRef)
	}

	// The metric names the picker is given are ones llmserve exports.
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, metrics.Options{ModelName: "m", Stats: func() engine.Stats { return engine.Stats{} }})
	if err != nil {
		t.Fatal(err)
	}
	m.SetCacheConfig(metrics.CacheConfig{BlockSize: 16, NumBlocks: 1})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var exported []string
	for _, mf := range mfs {
		exported = append(exported, mf.GetName())
	}
	args := epp[0].Args
	checked := 0
	for i := 0; i+1 < len(args); i++ {
		flagName, val := args[i], args[i+1]
		switch {
		case strings.HasSuffix(flagName, "-metric") && val != "":
			checked++
			name, _, _ := strings.Cut(val, "{")
			if !slices.Contains(exported, name) {
				t.Errorf("EPP %s %s: llmserve does not export %s", flagName, val, name)
			}
		case flagName == "--model-server-metrics-path" && probeStatus(probeServer(t), val) != http.StatusOK:
			t.Errorf("EPP scrapes %s, which is not llmserve's metrics route", val)
		case flagName == "--pool-name" && val != "llmserve-qwen":
			t.Errorf("EPP --pool-name %s", val)
		}
	}
	if checked < 4 {
		t.Errorf("checked %d metric flags", checked)
	}
}
