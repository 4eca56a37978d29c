// Mocha's spec reporter plus one closing line CI can read: "tests: N passed, N failed, N skipped".
// (CommonJS because mocha loads reporters with require.)
const Mocha = require('mocha');

class LifeboatReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const s = runner.stats ?? { passes: 0, failures: 0, pending: 0 };
      process.stdout.write(`tests: ${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

module.exports = LifeboatReporter;
