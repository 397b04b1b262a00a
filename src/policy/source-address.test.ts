import { describe, expect, it } from 'vitest';
import { createSourceCheck } from './source-address.js';

describe('createSourceCheck', () => {
  it('is absent when no networks are configured', () => {
    expect(createSourceCheck(undefined)).toBeUndefined();
  });

  const check = createSourceCheck(['10.0.0.0/8', '2001:db8::/32']);

  it.each(['10.1.2.3', '::ffff:10.1.2.3', '2001:db8::1'])('allows %s', (address) => {
    expect(() => check?.(address)).not.toThrow();
  });

  it.each(['192.168.1.1', '::ffff:192.168.1.1', '2001:db9::1', '127.0.0.1', '', undefined])('refuses %s', (address) => {
    expect(() => check?.(address)).toThrow(expect.objectContaining({ code: 'MG_ERR_AUTHZ_SOURCE_ADDRESS' }) as Error);
  });
});
