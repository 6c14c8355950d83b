#!/usr/bin/env node
'use strict'

// The `pixstore` command line: checking a store (beside a live app) and going back to 3.x (with no
// app using the store).

const { parseArgs } = require('node:util')

const USAGE = `Usage: pixstore <command> [options]

Commands:
  verify      Check that every image's file exists and decrypts, that the database is sound,
              and list files no record names (orphans). Runs beside a live app. Exit code 0:
              healthy; 1: problems found; 2: the check could not run.
  downgrade   Give every image file pixstore 3.x's name (KEY.pixstore-image), so that
              pixstore 3.x can open the store again. Stop every app using the store first.

Options:
  --database <path>   the SQLite database (default ./.pixstore.sqlite)
  --images <dir>      the image root (default pixstore-images)
  --repair            verify: remove the orphans it lists. Only with the database that belongs
                      to this image root: any file it does not name is removed.
  -h, --help          show this help

A store wrapped by a master key needs it in the PIXSTORE_MASTER_KEY environment variable.
`

async function main(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      database: { type: 'string', default: './.pixstore.sqlite' },
      images: { type: 'string', default: 'pixstore-images' },
      repair: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const [command, ...extra] = positionals
  if (values.help || command === undefined) {
    process.stdout.write(USAGE)
    return values.help ? 0 : 2
  }
  if (!Object.hasOwn(COMMANDS, command) || extra.length > 0) {
    process.stderr.write(`pixstore: unknown command ${JSON.stringify(positionals.join(' '))}\n\n`)
    process.stderr.write(USAGE)
    return 2
  }

  // verify keeps 1 for "problems found"; downgrade has always failed with 1.
  const cannotRun = command === 'verify' ? 2 : 1
  const fs = require('node:fs')
  if (!fs.existsSync(values.database)) {
    process.stderr.write(
      `pixstore: no database at ${JSON.stringify(values.database)}: pass the databasePath your ` +
        'app uses with --database (and its imageRootDir with --images)\n',
    )
    return cannotRun
  }
  if (!fs.existsSync(values.images)) {
    process.stderr.write(
      `pixstore: no image root at ${JSON.stringify(values.images)}: pass the imageRootDir your ` +
        'app uses with --images\n',
    )
    return cannotRun
  }

  const backend = require('../lib/backend.js')
  try {
    backend.initPixstoreBackend({
      databasePath: values.database,
      imageRootDir: values.images,
      defaultEndpointEnabled: false,
      errorHandlingMode: 'throw',
    })
    try {
      return await COMMANDS[command](values)
    } finally {
      await backend.closePixstoreBackend()
    }
  } catch (err) {
    process.stderr.write(`pixstore: ${err.code ? `${err.code}: ` : ''}${err.message}\n`)
    return cannotRun
  }
}

async function verify({ repair }) {
  const { verifyStore } = require('../lib/backend.js')
  const started = Date.now()
  const progress = progressLine()
  let report
  try {
    report = await verifyStore({ repair, onProgress: progress.update })
  } finally {
    progress.end()
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1)
  const out = (line) => process.stdout.write(`${line}\n`)

  out(`Checked ${report.records} image(s) in ${seconds} s: ${report.intact} intact.`)
  for (const { id, path } of report.missing) out(`  missing file  ${id}  ${path}`)
  for (const { id, reason } of report.damaged) out(`  damaged       ${id}  ${reason}`)
  for (const problem of report.databaseProblems) out(`  database      ${problem}`)
  for (const path of report.orphans) out(`  orphan        ${path}`)
  for (const { reason } of report.notRemoved) out(`  not removed   ${reason}`)
  if (report.orphans.length > 0) {
    if (!repair) out('Run again with --repair to remove the orphans.')
    else if (report.databaseProblems.length > 0) {
      out('Orphans kept: the database is damaged, so they may be images it lost.')
    } else if (report.removed > 0) out(`Removed ${report.removed} orphan file(s).`)
  }
  out(report.healthy ? 'The store is healthy.' : 'The store has problems (listed above).')
  return report.healthy ? 0 : 1
}

/** Progress on stderr while a check runs: one line redrawn on a terminal, a line a second otherwise. */
function progressLine() {
  const tty = process.stderr.isTTY
  let last = 0
  let shown = false
  return {
    update({ checked, total }) {
      const now = Date.now()
      if (now - last < (tty ? 100 : 1000) && checked !== total) return
      last = now
      shown = true
      const line = `checked ${checked}/${total} image(s)`
      process.stderr.write(tty ? `\r${line}` : `${line}\n`)
    },
    end() {
      if (tty && shown) process.stderr.write('\n')
    },
  }
}

async function downgrade() {
  const native = require('../lib/native.js')
  const { settle } = require('../lib/errors.js')
  const started = Date.now()
  const report = settle(await native.downgradeToLegacyNames())
  const ms = Date.now() - started
  process.stdout.write(`Gave ${report.renamed} file(s) pixstore 3.x's name in ${ms} ms.\n`)
  if (report.failed.length > 0) {
    for (const [id, reason] of report.failed) process.stderr.write(`  ${id}: ${reason}\n`)
    process.stderr.write(
      `${report.failed.length} image(s) kept their version (above): 3.x cannot read them. ` +
        'Fix or delete them, then run the command again.\n',
    )
    return 1
  }
  process.stdout.write('pixstore 3.x can open this store now.\n')
  return 0
}

const COMMANDS = { verify, downgrade }

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`pixstore: ${err.message}\n`)
    process.exit(2)
  },
)
