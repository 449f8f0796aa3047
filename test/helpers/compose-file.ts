import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';

export const repoRoot = path.resolve(__dirname, '../..');

/** The parts of a compose service the tests read; the schema test checks the full shape. */
export interface ComposeService {
  build?: string | { context?: string; dockerfile?: string };
  image?: string;
  command?: string | string[];
  environment?: Record<string, unknown> | string[];
  depends_on?: string[] | Record<string, { condition?: string }>;
  healthcheck?: { test?: string | string[] };
  restart?: string;
  ports?: unknown[];
  expose?: (string | number)[];
}

export interface ComposeFile {
  services: Record<string, ComposeService>;
}

/** docker-compose.yml as Compose reads it: `<<` merge keys resolved (YAML 1.1, which Compose follows). */
export function loadCompose(): { raw: unknown; file: ComposeFile } {
  const raw: unknown = parse(readFileSync(path.join(repoRoot, 'docker-compose.yml'), 'utf8'), { merge: true });
  return { raw, file: raw as ComposeFile };
}

export function service(file: ComposeFile, name: string): ComposeService {
  const found = file.services[name];
  if (!found) throw new Error(`docker-compose.yml has no service "${name}"`);
  return found;
}

const keyValue = (pair: string): [string, string] => [pair.split('=')[0] ?? '', pair.slice(pair.indexOf('=') + 1)];

/** Both environment forms: a map, or a list of KEY=value. */
export function environment(s: ComposeService): Map<string, string> {
  const env = s.environment ?? {};
  const entries = Array.isArray(env)
    ? env.map(keyValue)
    : Object.entries(env).map(([k, v]): [string, string] => [k, String(v)]);
  return new Map(entries);
}

/** A published port: the host address it is bound to (undefined: every interface) and the container port. */
export interface PublishedPort {
  hostIp?: string;
  target: string;
}

/** Both `ports` forms: `[[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL]` (IPv6 in brackets) and the long form. */
export function publishedPorts(s: ComposeService): PublishedPort[] {
  return (s.ports ?? []).map((port) => {
    if (typeof port === 'object' && port !== null) {
      const long = port as { host_ip?: string; target?: string | number };
      return { hostIp: long.host_ip, target: String(long.target) };
    }
    const spec = String(port).replace(/\/\w+$/, '');
    const ipv6 = /^\[([^\]]+)\]:(.*)$/.exec(spec);
    const parts = (ipv6?.[2] ?? spec).split(':');
    return { hostIp: ipv6?.[1] ?? (parts.length === 3 ? parts[0] : undefined), target: parts.at(-1) ?? '' };
  });
}

/** Both depends_on forms; the short list form means `service_started`. */
export function dependsOn(s: ComposeService): Map<string, string> {
  const deps = s.depends_on ?? [];
  if (Array.isArray(deps)) return new Map(deps.map((d) => [d, 'service_started']));
  return new Map(Object.entries(deps).map(([k, v]) => [k, v.condition ?? 'service_started']));
}

/** The command as argv; the string form is split the way Compose splits it (on spaces, no shell). */
export function commandArgs(s: ComposeService): string[] {
  if (s.command === undefined) return [];
  return Array.isArray(s.command) ? s.command : s.command.split(/\s+/).filter(Boolean);
}

export function healthcheckCommand(s: ComposeService): string {
  const test = s.healthcheck?.test ?? [];
  return Array.isArray(test) ? test.join(' ') : test;
}

export function buildContext(s: ComposeService): { context?: string; dockerfile: string } {
  if (typeof s.build === 'string') return { context: s.build, dockerfile: 'Dockerfile' };
  return { context: s.build?.context, dockerfile: s.build?.dockerfile ?? 'Dockerfile' };
}

export interface DockerStage {
  /** The image or earlier stage it starts from. */
  base: string;
  name?: string;
  /** Each instruction on one line, continuation lines joined, with those of the stages it builds on first. */
  instructions: string[];
}

/** What a stage's `ENV KEY=value …` instructions set. */
export function stageEnvironment(stage: DockerStage): Map<string, string> {
  const pairs = stage.instructions.filter((i) => /^ENV\s/i.test(i)).flatMap((i) => i.split(/\s+/).slice(1));
  return new Map(pairs.map(keyValue));
}

/** The Dockerfile split into its stages; comments and the syntax directive dropped. */
export function loadDockerfileStages(): DockerStage[] {
  const text = readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8');
  const lines = text
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const stages: DockerStage[] = [];
  for (const line of lines) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?$/i.exec(line);
    if (from) {
      const parent = stages.find((s) => s.name === from[1]);
      stages.push({ base: from[1] ?? '', name: from[2], instructions: [...(parent?.instructions ?? [])] });
    } else stages.at(-1)?.instructions.push(line);
  }
  return stages;
}
