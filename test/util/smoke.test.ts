import assert from 'node:assert/strict';
describe('toolchain', () => {
  it('compiles strict TypeScript to ES modules', () => {
    assert.equal(typeof import.meta.url, 'string');
  });
});
