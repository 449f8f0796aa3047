# syntax=docker/dockerfile:1
# One image for every taskbox process; the command picks which one runs:
#   api (default)  node services/api/dist/main.js
#   relay          node services/relay/dist/main.js
#   worker         node services/worker/dist/main.js
#   all three      node services/all-in-one/dist/main.js (one process, for a small deployment)
#   migrate        node tools/dist/migrate-main.js
# One image means one build and one version to roll out, and the same artifact runs on a laptop
# (docker-compose.yml) and as separate deployments in production.

# Workspace manifests only: the `npm ci` layers are rebuilt only when a package.json or the lockfile changes.
FROM node:20-bookworm-slim AS manifests
WORKDIR /app
COPY package.json package-lock.json ./
COPY packages/shared/package.json packages/shared/
COPY packages/tasks/package.json packages/tasks/
COPY packages/client/package.json packages/client/
COPY services/api/package.json services/api/
COPY services/relay/package.json services/relay/
COPY services/worker/package.json services/worker/
COPY services/all-in-one/package.json services/all-in-one/
COPY tools/package.json tools/

FROM manifests AS build
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build

FROM manifests AS runtime
ENV NODE_ENV=production
# Production dependencies of every workspace; npm links @taskbox/shared to packages/shared.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/packages/shared/dist packages/shared/dist
COPY --from=build /app/packages/tasks/dist packages/tasks/dist
COPY --from=build /app/services/api/dist services/api/dist
# The dashboard (/dashboard/): its page and style, its compiled modules, and the client build they import.
COPY --from=build /app/services/api/dashboard/static services/api/dashboard/static
COPY --from=build /app/services/api/dashboard/dist services/api/dashboard/dist
COPY --from=build /app/packages/client/dist/browser packages/client/dist/browser
COPY --from=build /app/services/relay/dist services/relay/dist
COPY --from=build /app/services/worker/dist services/worker/dist
COPY --from=build /app/services/all-in-one/dist services/all-in-one/dist
COPY --from=build /app/tools/dist tools/dist
# migrate.ts resolves migrations as <its dist>/../../../db/migrations/dist, so keep the repo layout.
COPY --from=build /app/db/migrations/dist db/migrations/dist
USER node
EXPOSE 3000 3001 3002
CMD ["node", "services/api/dist/main.js"]
