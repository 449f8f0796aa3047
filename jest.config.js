/** Tests run against real Postgres and RabbitMQ; see test/global-setup.ts for how they are found. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // test/tsconfig.json sets isolatedModules: transpile only (`npm run typecheck` checks types), which keeps jest fast.
  transform: { '^.+\\.(ts|js)$': ['ts-jest', { tsconfig: 'test/tsconfig.json' }] },
  // jose 6 is ESM only: node loads it through require(esm), jest's module loader cannot, so jest compiles it.
  transformIgnorePatterns: ['/node_modules/(?!jose/)'],
  moduleNameMapper: {
    '^@taskbox/shared$': '<rootDir>/packages/shared/src/index.ts',
    '^@taskbox/tasks$': '<rootDir>/packages/tasks/src/index.ts',
    '^@taskbox/client$': '<rootDir>/packages/client/src/index.ts',
    // The client is ESM and names its own modules with .js, as Node requires; jest runs its sources.
    '^(\\.{1,2}/.*)\\.js$': '$1',
  },
  globalSetup: '<rootDir>/test/global-setup.ts',
  globalTeardown: '<rootDir>/test/global-teardown.ts',
  setupFilesAfterEnv: ['<rootDir>/test/leak-check.ts'],
  // leak-check.ts fails a file that leaves a service or a server running; anything else left open (a
  // client socket, a timer) must not hold the run until CI times out with every test passed.
  forceExit: true,
  testTimeout: 60_000,
};
