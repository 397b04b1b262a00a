# syntax=docker/dockerfile:1
# meshgate runs on Node.js 24 LTS in the image (the source supports 20.19 and later).

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# Istio's CA proto, for `meshgate xds --csr` (Envoy's protos come with @grpc/grpc-js-xds).
COPY protos ./protos
# The node user (uid 1000) of the base image; listeners use ports above 1024.
USER 1000:1000
EXPOSE 15012 15017 8443 9901
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["serve", "--config", "/etc/meshgate/meshgate.yaml"]
