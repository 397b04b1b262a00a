/**
 * Envoy's MetricsService protos, loaded once with protobufjs: `StreamMetricsMessage` (from the
 * `@grpc/grpc-js-xds` package's `deps/envoy-api`) and the Prometheus client model it carries
 * (`protos/io/prometheus/client/metrics.proto`: the fields meshgate reads, with the model's field
 * numbers; grpc-js-xds does not ship it).
 */
import { createRequire } from 'node:module';
import protobuf from 'protobufjs';
import { protoRoot } from '../../grpc/proto-root.js';

const require = createRequire(import.meta.url);

export const METRICS_SERVICE_PROTO = 'envoy/service/metrics/v3/metrics_service.proto';
export const STREAM_METRICS_METHOD = '/envoy.service.metrics.v3.MetricsService/StreamMetrics';

export interface LabelPair {
  readonly name?: string;
  readonly value?: string;
}
export interface PromMetric {
  readonly label?: readonly LabelPair[];
  readonly gauge?: { readonly value?: number };
  readonly counter?: { readonly value?: number };
  readonly untyped?: { readonly value?: number };
  readonly summary?: { readonly sample_count?: number; readonly sample_sum?: number; readonly quantile?: readonly { quantile?: number; value?: number }[] };
  readonly histogram?: {
    readonly sample_count?: number;
    readonly sample_sum?: number;
    readonly bucket?: readonly { cumulative_count?: number; upper_bound?: number }[];
  };
}
export interface MetricFamily {
  readonly name?: string;
  readonly help?: string;
  readonly type?: 'COUNTER' | 'GAUGE' | 'SUMMARY' | 'UNTYPED' | 'HISTOGRAM' | 'GAUGE_HISTOGRAM';
  readonly metric?: readonly PromMetric[];
}
export interface StreamMetricsMessage {
  readonly identifier?: { readonly node?: { readonly id?: string; readonly cluster?: string; readonly metadata?: unknown } };
  readonly envoy_metrics?: readonly MetricFamily[];
}

let type: protobuf.Type | undefined;

export function streamMetricsMessageType(): protobuf.Type {
  if (type) return type;
  const root = protoRoot();
  // google/protobuf/descriptor.proto, which the protos' options import, as @grpc/proto-loader adds it.
  protobuf.common('descriptor', (require('protobufjs/google/protobuf/descriptor.json') as { nested: { google: { nested: { protobuf: { nested: protobuf.INamespace['nested'] } } } } }).nested.google.nested.protobuf.nested ?? {});
  root.loadSync(METRICS_SERVICE_PROTO, { keepCase: true });
  type = root.lookupType('envoy.service.metrics.v3.StreamMetricsMessage');
  return type;
}

/** Decodes one message into plain data: 64-bit counts as numbers, enums as names. */
export function decodeStreamMetrics(payload: Buffer): StreamMetricsMessage {
  const t = streamMetricsMessageType();
  return t.toObject(t.decode(payload), { longs: Number, enums: String, defaults: false, json: true });
}
