import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Container, PodSpec } from 'kubernetes-types/core/v1';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { repoRoot } from './compose-file';

export const deployDir = path.join(repoRoot, 'deploy');

/** One document of a YAML file under deploy/, as parsed, with where it came from. */
export interface Manifest {
  file: string;
  doc: {
    apiVersion: string;
    kind: string;
    metadata: { name: string; labels?: Record<string, string> };
    spec?: unknown;
    stringData?: Record<string, string>;
  };
}

export function loadManifests(): Manifest[] {
  return readdirSync(deployDir)
    .filter((f) => /\.ya?ml$/.test(f))
    .flatMap((file) =>
      parseAllDocuments(readFileSync(path.join(deployDir, file), 'utf8')).map((d) => ({
        file,
        doc: d.toJS() as Manifest['doc'],
      })),
    );
}

/** The kubernetes-types module of an apiVersion: `v1` is core/v1, `apps/v1` apps/v1, `x.k8s.io/v1` x/v1. */
function typesModule(apiVersion: string): string {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['core', apiVersion];
  return `kubernetes-types/${group?.split('.')[0]}/${version}`;
}

/**
 * Type-checks each manifest as an object literal of its kind's type from kubernetes-types (the
 * Kubernetes API's own types): a misspelled or unknown field, a wrong type, a missing required field
 * or an unknown kind is an error. Returns one line per error, naming the manifest.
 */
export function kubernetesTypeErrors(manifests: Manifest[]): string[] {
  const checkFile = path.join(deployDir, '__manifests__.ts');
  const source = manifests
    .map(
      (m, i) =>
        `export const m${i}: import('${typesModule(m.doc.apiVersion)}').${m.doc.kind} = ${JSON.stringify(m.doc)};`,
    )
    .join('\n');
  const options: ts.CompilerOptions = { strict: true, noEmit: true, skipLibCheck: true, types: [] };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version, ...rest) =>
    name === checkFile ? ts.createSourceFile(name, source, version) : getSourceFile(name, version, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === checkFile || fileExists(name);
  const program = ts.createProgram([checkFile], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const where = manifests[line]
      ? `${manifests[line].file} ${manifests[line].doc.kind}/${manifests[line].doc.metadata.name}`
      : '';
    return `${where}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
  });
}

/** The pod spec of a Deployment or a Job. */
export function podSpec(m: Manifest): PodSpec {
  return (m.doc.spec as { template: { spec: PodSpec } }).template.spec;
}

export function onlyContainer(m: Manifest): Container {
  const [container, ...others] = podSpec(m).containers;
  if (!container || others.length > 0) throw new Error(`${m.doc.metadata.name} should run one container`);
  return container;
}

/** A container's environment as the pod would see it, secretKeyRefs read from `secret` (optional ones may be absent). */
export function resolvedEnv(container: Container, secret: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of container.env ?? []) {
    const ref = e.valueFrom?.secretKeyRef;
    const value = ref ? secret[ref.key] : e.value;
    if (value !== undefined) env[e.name] = value;
    else if (!ref?.optional) throw new Error(`${container.name}: ${e.name} has no value`);
  }
  return env;
}

/** The container port a probe or a Service names, by name or by number. */
export function portNumber(container: Container, port: number | string | undefined): number | undefined {
  return typeof port === 'number' ? port : container.ports?.find((p) => p.name === port)?.containerPort;
}
