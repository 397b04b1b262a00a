import { describe, expect, it } from 'vitest';
import { createResourceRegistry, fingerprintOf, type CloseReason, type Owned } from './registry.js';

function tracked(): { create: (name: string) => () => Owned<string>; closed: [string, CloseReason][] } {
  const closed: [string, CloseReason][] = [];
  return {
    closed,
    create: (name) => () => ({ value: name, close: (reason) => closed.push([name, reason]) }),
  };
}

describe('resource registry', () => {
  it('gives an unchanged key the same resource, and closes nothing', () => {
    const { create, closed } = tracked();
    const registry = createResourceRegistry({ drainMs: () => 60_000 });
    const first = registry.begin();
    const a = first.use('acme/pool', { url: 'https://istiod:15012' }, create('a1'));
    first.commit();
    const second = registry.begin();
    const again = second.use('acme/pool', { url: 'https://istiod:15012' }, create('a2'));
    second.commit();
    expect(again).toBe(a);
    expect(closed).toEqual([]);
    expect(registry.stats()).toEqual({ current: 1, draining: 0, holds: 0 });
  });

  it('replaces a changed key for new work, and closes the old one when its last holder lets go', () => {
    const { create, closed } = tracked();
    const registry = createResourceRegistry({ drainMs: () => 60_000 });
    const first = registry.begin();
    const old = first.use('acme/pool', { url: 'a' }, create('old'));
    first.commit();
    const release = old.hold();

    const second = registry.begin();
    const fresh = second.use('acme/pool', { url: 'b' }, create('new'));
    second.commit();
    expect(fresh.value).toBe('new');
    expect(registry.stats()).toEqual({ current: 1, draining: 1, holds: 1 });
    expect(closed).toEqual([]);

    release();
    release(); // a second release is a no-op
    expect(closed).toEqual([['old', 'replaced']]);
    expect(registry.stats()).toEqual({ current: 1, draining: 0, holds: 0 });
  });

  it('closes a replaced resource at the drain bound when work still holds it', async () => {
    const closed: string[] = [];
    let drained: () => void = () => undefined;
    const done = new Promise<void>((resolve) => (drained = resolve));
    const registry = createResourceRegistry({
      drainMs: () => 20,
      onClose: (key, reason) => {
        closed.push(`${key} ${reason}`);
        drained();
      },
    });
    const first = registry.begin();
    first.use('acme/pool', 1, () => ({ value: 1, close: () => undefined })).hold();
    first.commit();
    const second = registry.begin();
    second.use('acme/pool', 2, () => ({ value: 2, close: () => undefined }));
    second.commit();
    expect(closed).toEqual([]);
    await done;
    expect(closed).toEqual(['acme/pool drained']);
  });

  it('closes a removed key at once, even while work holds it', () => {
    const { create, closed } = tracked();
    const registry = createResourceRegistry({ drainMs: () => 60_000 });
    const first = registry.begin();
    first.use('acme/pool', 1, create('acme')).hold();
    first.use('globex/pool', 1, create('globex'));
    first.commit();
    const second = registry.begin();
    second.use('globex/pool', 1, create('globex-again'));
    second.commit();
    expect(closed).toEqual([['acme', 'removed']]);
  });

  it('leaves everything as it was when a build is aborted', () => {
    const { create, closed } = tracked();
    const registry = createResourceRegistry({ drainMs: () => 60_000 });
    const first = registry.begin();
    const kept = first.use('acme/pool', 1, create('kept'));
    first.commit();
    const second = registry.begin();
    second.use('acme/pool', 2, create('never-used'));
    second.use('acme/pool-b', 1, create('also-never'));
    second.abort();
    expect(closed).toEqual([
      ['never-used', 'shutdown'],
      ['also-never', 'shutdown'],
    ]);
    const third = registry.begin();
    expect(third.use('acme/pool', 1, create('x'))).toBe(kept);
    third.commit();
  });

  it('gives no new work to a closed resource, and reports a close that throws instead of throwing', () => {
    const errors: string[] = [];
    const registry = createResourceRegistry({ drainMs: () => 60_000, onError: (key) => errors.push(key) });
    const first = registry.begin();
    const lease = first.use('acme/pool', 1, () => ({ value: 1, close: () => { throw new Error('boom'); } }));
    first.commit();
    registry.begin().commit(); // acme removed: closed at once
    expect(errors).toEqual(['acme/pool']);
    expect(() => lease.hold()).toThrow(expect.objectContaining({ code: 'MG_ERR_UPSTREAM_REPLACED' }) as Error);
  });

  it('refuses one key with two different inputs in one generation', () => {
    const registry = createResourceRegistry({ drainMs: () => 60_000 });
    const generation = registry.begin();
    generation.use('acme/pool', 1, () => ({ value: 1, close: () => undefined }));
    expect(() => generation.use('acme/pool', 2, () => ({ value: 2, close: () => undefined }))).toThrow(/used twice/);
  });

  it('closes current and draining resources on close', () => {
    const { create, closed } = tracked();
    const registry = createResourceRegistry({ drainMs: () => 60_000 });
    const first = registry.begin();
    first.use('acme/pool', 1, create('old')).hold();
    first.commit();
    const second = registry.begin();
    second.use('acme/pool', 2, create('new'));
    second.commit();
    registry.close();
    expect(closed.sort()).toEqual([
      ['new', 'shutdown'],
      ['old', 'shutdown'],
    ]);
    expect(registry.stats()).toEqual({ current: 0, draining: 0, holds: 0 });
  });
});

describe('fingerprintOf', () => {
  it('ignores key order and undefined fields, and sees every value', () => {
    expect(fingerprintOf({ a: 1, b: [1, { c: 'x' }] })).toBe(fingerprintOf({ b: [1, { c: 'x' }], a: 1, d: undefined }));
    expect(fingerprintOf({ a: 1 })).not.toBe(fingerprintOf({ a: 2 }));
    expect(fingerprintOf({ a: 'x' })).not.toBe(fingerprintOf({ a: ['x'] }));
  });
});
