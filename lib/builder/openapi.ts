/**
 * `GET /v1/openapi.json`: the API's OpenAPI 3.1 document, generated from the same route table
 * and JSON schemas fastify validates with, so the description cannot drift from the server.
 */
import { errorSchema } from './schemas.js';
import type { RouteDefinition } from './routes.js';
import type { KeysResponse } from '../protocol.js';

const ERRORS: Record<string, string> = {
  400: 'ERR_REQUEST_INVALID: malformed JSON or a body/query that fails the schema',
  401: 'ERR_UNAUTHORIZED: no or wrong bearer token',
  403: 'ERR_SOURCE_REFUSED: the source or output URL points at a link-local address, or a loopback/private one builder.allowSources does not list (nothing was sent there)',
  404: 'ERR_BUILD_NOT_FOUND',
  413: 'ERR_REQUEST_TOO_LARGE',
  422: 'ERR_TARGET_UNSUPPORTED (lists the targets served), ERR_SOURCE_FETCH, ERR_INTEGRITY, ERR_INPUT_TOO_LARGE',
  503: 'ERR_BUILDER_STOPPING: draining; ERR_BUILDER_BUSY: the queue is full (builder.maxQueued); both with Retry-After',
};

function parameters(schema: { properties?: Record<string, object>; required?: readonly string[] } | undefined, where: 'path' | 'query' | 'header') {
  return Object.entries(schema?.properties ?? {}).map(([name, property]) => ({
    name,
    in: where,
    required: where === 'path' || (schema?.required ?? []).includes(name),
    schema: property,
  }));
}

export function openapiDocument(routes: readonly RouteDefinition[], info: { version: string; methods?: Record<string, string>; keys?: KeysResponse['keys']; isolation?: string }): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const path = route.url.replace(/:([a-zA-Z]+)/g, '{$1}');
    const responses: Record<string, unknown> = {};
    for (const [status, schema] of Object.entries(route.schema.response ?? {})) {
      responses[status] = { description: status === '202' ? 'Accepted: a new build' : 'OK', content: { 'application/json': { schema } } };
    }
    if (Object.keys(responses).length === 0) {
      responses['200'] = { description: 'OK', content: { [route.produces ?? 'application/json']: { schema: route.produces ? { type: 'string' } : { type: 'object' } } } };
    }
    const codes = route.public ? [] : ['401', ...(route.url.includes(':id') ? ['404'] : []), ...(route.method === 'POST' ? ['400', '403', '413', '422', '503'] : route.schema.querystring ? ['400'] : [])];
    for (const code of codes) responses[code] = { description: ERRORS[code], content: { 'application/json': { schema: errorSchema } } };
    const schema = route.schema as { params?: object; querystring?: object; headers?: object; body?: object };
    paths[path] ??= {};
    paths[path][route.method.toLowerCase()] = {
      summary: route.summary,
      ...(route.public ? { security: [] } : {}),
      parameters: [
        ...parameters(schema.params as never, 'path'),
        ...parameters(schema.querystring as never, 'query'),
        ...parameters(schema.headers as never, 'header'),
      ],
      ...(schema.body ? { requestBody: { required: true, content: { 'application/json': { schema: schema.body } } } } : {}),
      responses,
    };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'bundle-dispatch builder',
      version: info.version,
      description: `Runs the bundle workflow for remote clients. See docs/builder.md.${info.methods ? ` Targets served, and how each is built: ${Object.entries(info.methods).map(([target, method]) => `${target} (${method})`).join(', ')}.` : ''}${info.isolation ? ` Install scripts are isolated by: ${info.isolation} (docs/sandbox.md).` : ''}`,
      // bubblewrap, bubblewrap+build-user, build-user or none: what a build's scripts cannot escape.
      ...(info.isolation ? { 'x-isolation': info.isolation } : {}),
      // Machine-readable: native, cross-compiled (cross toolchain + emulated load) or cross (nothing may compile).
      ...(info.methods ? { 'x-targets': info.methods } : {}),
      // The provenance signing keys (as GET /v1/keys): a consumer can pin them from here too.
      ...(info.keys ? { 'x-signing-keys': info.keys } : {}),
    },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    security: [{ bearer: [] }],
    paths,
  };
}
