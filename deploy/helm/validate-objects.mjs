// Validates every Kubernetes object in rendered manifests against its schema with
// kubernetes-models (core and apps from the Kubernetes OpenAPI, PrometheusRule /
// ServiceMonitor / PodMonitor from the prometheus-operator CRDs, Certificate from
// cert-manager's), run with node from .tools/ (scripts/install-deploy-tools.sh).
//
//   node deploy/helm/validate-objects.mjs RENDERED.yaml...
//
// One line per object ("ok   Kind/name" or "FAIL Kind/name: what is wrong"), then
// "N passed, M failed"; exit 1 on any failure, including a kind no package knows: an
// object nobody validated counts as a failure, not a pass.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const tools = process.env.LAZYMIG_TOOLS ?? join(dirname(fileURLToPath(import.meta.url)), "../../.tools");
const { parseAllDocuments } = createRequire(join(tools, "node_modules/"))("yaml");
// The model packages are ESM with "import"-only exports, which require.resolve cannot
// see: their module directories are imported by path.
const modulePath = (spec) => pathToFileURL(join(tools, "node_modules", spec, "index.js")).href;

// apiVersion group -> the package that models it.
const packages = {
  "": "kubernetes-models",
  "apps": "kubernetes-models",
  "policy": "kubernetes-models",
  "rbac.authorization.k8s.io": "kubernetes-models",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "cert-manager.io": "@kubernetes-models/cert-manager",
};

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const pkg = packages[group];
  if (!pkg) return [null, `no validator package for API group '${group}'`];
  const path = group ? `${pkg}/${group}/${version}` : `${pkg}/${version}`;
  let mod;
  try {
    mod = await import(modulePath(path));
  } catch (e) {
    return [null, `${pkg} has no models for ${apiVersion}`];
  }
  return mod[kind] ? [mod[kind], null] : [null, `${pkg} has no model ${apiVersion} ${kind}`];
}

let passed = 0, failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) {
      console.log(`FAIL ${file}: YAML: ${doc.errors[0].message}`);
      failed++;
      continue;
    }
    const obj = doc.toJS();
    if (obj == null) continue;
    const what = `${obj.kind}/${obj.metadata?.name}`;
    const [Model, why] = await modelFor(obj.apiVersion ?? "", obj.kind ?? "");
    if (!Model) {
      console.log(`FAIL ${what}: ${why}`);
      failed++;
      continue;
    }
    try {
      new Model(obj).validate();
      console.log(`ok   ${what} (${obj.apiVersion})`);
      passed++;
    } catch (e) {
      console.log(`FAIL ${what}: ${e.message}`);
      failed++;
    }
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || passed === 0 ? 1 : 0);
