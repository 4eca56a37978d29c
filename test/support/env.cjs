// Loaded by mocha before any test (see .mocharc.json): the test run gets its own LIFEBOAT_HOME, so the
// catalog and other per-user state that commands write never land in the real ~/.lifeboat.
const { mkdtempSync, rmSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');

const home = mkdtempSync(join(tmpdir(), 'lifeboat-test-home-'));
process.env.LIFEBOAT_HOME = home;
delete process.env.LIFEBOAT_CATALOG;
process.on('exit', () => rmSync(home, { recursive: true, force: true }));
