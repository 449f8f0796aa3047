import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PodDisruptionBudget } from 'kubernetes-types/policy/v1';
import { amqpUrls, configKeys, loadConfig } from '@taskbox/shared';
import { authStartProblem } from '../../services/api/src/auth';
import { loadDockerfileStages, repoRoot, stageEnvironment } from '../helpers/compose-file';
import {
  deployDir,
  kubernetesTypeErrors,
  loadManifests,
  onlyContainer,
  podSpec,
  portNumber,
  resolvedEnv,
  type Manifest,
} from '../helpers/deploy-files';

// No Kubernetes cluster runs these tests: the manifests are checked against the API's types and
// against what the services read and serve.
const manifests = loadManifests();
const find = (kind: string, name: string): Manifest => {
  const found = manifests.find((m) => m.doc.kind === kind && m.doc.metadata.name === name);
  if (!found) throw new Error(`deploy/ has no ${kind} ${name}`);
  return found;
};
const SERVICES = ['api', 'relay', 'worker'] as const;
const deployments = SERVICES.map((s) => find('Deployment', `taskbox-${s}`));
const migrate = find('Job', 'taskbox-migrate');
const workloads = [migrate, ...deployments];
const secret = find('Secret', 'taskbox').doc.stringData ?? {};
const imageEnv = stageEnvironment(loadDockerfileStages().at(-1) ?? { base: '', instructions: [] });
const ENTRYPOINTS: Record<string, string> = {
  'taskbox-migrate': 'tools/dist/migrate-main.js',
  'taskbox-api': 'services/api/dist/main.js',
  'taskbox-relay': 'services/relay/dist/main.js',
  'taskbox-worker': 'services/worker/dist/main.js',
};
/** The port each service listens on: the api's PORT, the relay's and the worker's HEALTH_PORT. */
const LISTEN_ENV: Record<string, string> = { api: 'PORT', relay: 'HEALTH_PORT', worker: 'HEALTH_PORT' };

/** The config a workload's container starts with: the image's env, then the manifest's, Secret values in. */
const configOf = (m: Manifest) =>
  loadConfig({ ...Object.fromEntries(imageEnv), ...resolvedEnv(onlyContainer(m), secret) });

describe('deploy/ (Kubernetes manifests)', () => {
  it('type-checks against the Kubernetes API types, so no field is misspelled, unknown or of the wrong type', () => {
    expect(kubernetesTypeErrors(manifests)).toEqual([]);
  });

  it('the type check rejects a misspelled field', () => {
    const api = find('Deployment', 'taskbox-api');
    const broken = JSON.parse(
      JSON.stringify(api.doc).replace('"readinessProbe"', '"readinesProbe"'),
    ) as Manifest['doc'];
    expect(kubernetesTypeErrors([{ file: api.file, doc: broken }]).join('\n')).toMatch(/readinesProbe/);
  });

  it('runs the migrate Job and the three Deployments from one image, each with the file `npm run build` makes', () => {
    const images = new Set(workloads.map((m) => onlyContainer(m).image));
    expect(images.size).toBe(1);
    for (const m of workloads) {
      const [node, entry = ''] = onlyContainer(m).command ?? [];
      expect([m.doc.metadata.name, node, entry]).toEqual([
        m.doc.metadata.name,
        'node',
        ENTRYPOINTS[m.doc.metadata.name],
      ]);
      expect([entry, existsSync(path.join(repoRoot, entry))]).toEqual([entry, true]);
    }
  });

  it('probes /readyz for readiness and /healthz for liveness on the port each service listens on', () => {
    for (const [i, service] of SERVICES.entries()) {
      const container = onlyContainer(deployments[i]!);
      const listens = configOf(deployments[i]!)[LISTEN_ENV[service] as 'PORT' | 'HEALTH_PORT'];
      const probes = [container.readinessProbe?.httpGet, container.livenessProbe?.httpGet];
      expect([service, ...probes.map((p) => [p?.path, portNumber(container, p?.port)])]).toEqual([
        service,
        ['/readyz', listens],
        ['/healthz', listens],
      ]);
    }
    const apiService = find('Service', 'taskbox-api').doc.spec as { ports: { targetPort: string | number }[] };
    expect(portNumber(onlyContainer(deployments[0]!), apiService.ports[0]?.targetPort)).toBe(3000);
  });

  it('sets only variables the config schema reads, and each service starts under the image’s NODE_ENV=production', () => {
    const known = new Set<string>(configKeys);
    expect(Object.keys(secret).filter((key) => !known.has(key))).toEqual([]);
    for (const m of workloads) {
      const names = (onlyContainer(m).env ?? []).map((e) => e.name);
      expect([m.doc.metadata.name, names.filter((n) => !known.has(n))]).toEqual([m.doc.metadata.name, []]);
    }
    expect(imageEnv.get('NODE_ENV')).toBe('production');
    expect(authStartProblem(configOf(find('Deployment', 'taskbox-api')))).toBeUndefined();
    for (const name of ['taskbox-relay', 'taskbox-worker']) {
      expect([name, amqpUrls(configOf(find('Deployment', name))).length]).toEqual([name, 3]);
    }
  });

  it('reads DATABASE_URL and AMQP_URLS from the Secret, never from the manifest itself', () => {
    for (const m of workloads) {
      for (const e of onlyContainer(m).env ?? []) {
        if (/^(DATABASE_URL|AMQP_URLS?|AUTH_TOKENS|AUTH_JWT_SECRET)$/.test(e.name)) {
          expect([e.name, e.valueFrom?.secretKeyRef?.name]).toEqual([e.name, 'taskbox']);
        }
      }
    }
  });

  it('gives the api what its dashboard and its replicas need: the broker, one stream token key, the admin claim', () => {
    const names = (onlyContainer(find('Deployment', 'taskbox-api')).env ?? []).map((e) => e.name);
    expect(names).toEqual(expect.arrayContaining(['AMQP_URLS', 'STREAM_TOKEN_SECRET', 'AUTH_JWT_ADMIN_CLAIM']));
  });

  it('gives every pod longer to stop than its preStop pause plus SHUTDOWN_TIMEOUT_MS', () => {
    for (const m of deployments) {
      const container = onlyContainer(m);
      const pause = Number(container.lifecycle?.preStop?.exec?.command?.find((a) => /^\d+$/.test(a)) ?? 0);
      const needed = pause + configOf(m).SHUTDOWN_TIMEOUT_MS / 1000;
      expect([m.doc.metadata.name, podSpec(m).terminationGracePeriodSeconds! > needed]).toEqual([
        m.doc.metadata.name,
        true,
      ]);
    }
  });

  it('requests CPU and memory for every container, and caps its memory', () => {
    for (const m of workloads) {
      const { requests, limits } = onlyContainer(m).resources ?? {};
      expect([m.doc.metadata.name, requests?.cpu, requests?.memory, limits?.memory].every(Boolean)).toBe(true);
    }
  });

  it('keeps each Deployment running through a node drain: a PodDisruptionBudget selects its pods and lets one go', () => {
    const budgets = manifests
      .filter((m) => m.doc.kind === 'PodDisruptionBudget')
      .map((m) => m.doc as PodDisruptionBudget);
    for (const m of deployments) {
      const spec = m.doc.spec as { replicas: number; template: { metadata: { labels: Record<string, string> } } };
      const labels = spec.template.metadata.labels;
      const budget = budgets.find((b) =>
        Object.entries(b.spec?.selector?.matchLabels ?? {}).every(([k, v]) => labels[k] === v),
      )?.spec;
      const evictable = budget?.maxUnavailable ?? spec.replicas - Number(budget?.minAvailable ?? spec.replicas);
      expect([m.doc.metadata.name, budget !== undefined, Number(evictable) >= 1, spec.replicas >= 2]).toEqual([
        m.doc.metadata.name,
        true,
        true,
        true,
      ]);
    }
  });

  /** rollout.sh run against a fake kubectl that answers the Job's state and records every call. */
  function rollout(jobState: string): { code: number | null; calls: string[]; stderr: string } {
    const bin = mkdtempSync(path.join(os.tmpdir(), 'rollout-'));
    const log = path.join(bin, 'calls');
    // Its first read of the Job fails and its second finds nothing yet, as an API server may answer.
    const fake = [
      '#!/bin/sh',
      `echo "$*" >> ${log}`,
      'case "$*" in "get job"*)',
      `  n=$(grep -c '^get job' ${log})`,
      '  [ "$n" -eq 1 ] && exit 1',
      `  [ "$n" -gt 2 ] && echo ${jobState}`,
      '  exit 0 ;;',
      'esac',
      'cat > /dev/null',
      '',
    ].join('\n');
    writeFileSync(path.join(bin, 'kubectl'), fake, { mode: 0o755 });
    try {
      const run = spawnSync('sh', [path.join(deployDir, 'rollout.sh'), 'registry.example.com/taskbox:9'], {
        env: { PATH: `${bin}:${process.env.PATH ?? ''}` },
        input: '',
        encoding: 'utf8',
        timeout: 20_000,
      });
      return { code: run.status, calls: readFileSync(log, 'utf8').trim().split('\n'), stderr: run.stderr };
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  }

  it('rollout.sh applies the Deployments only once the migrate Job is complete, through a failed read of it, the api first', () => {
    const { code, calls } = rollout('Complete');
    expect(code).toBe(0);
    expect(calls.filter((c) => c.startsWith('get job'))).toHaveLength(3);
    const waited = calls.findLastIndex((c) => c.startsWith('get job taskbox-migrate'));
    expect(waited).toBeGreaterThan(calls.indexOf('apply -f -'));
    expect(calls.slice(waited + 1)).toEqual([
      'apply -f -',
      'rollout status deployment/taskbox-api --timeout=600s',
      'apply -f -',
      'apply -f -',
      ...['relay', 'worker'].map((p) => `rollout status deployment/taskbox-${p} --timeout=600s`),
    ]);
  });

  it('rollout.sh stops at a failed migrate Job, saying so, and rolls nothing out', () => {
    const { code, calls, stderr } = rollout('Failed');
    expect(code).toBe(1);
    expect(calls.filter((c) => c === 'apply -f -')).toHaveLength(1);
    expect(calls.some((c) => c.startsWith('rollout'))).toBe(false);
    expect(stderr).toMatch(/the migrate Job failed/);
  });
});
