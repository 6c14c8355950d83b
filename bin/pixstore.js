#!/usr/bin/env node
'use strict'

// The `pixstore` command line: maintenance of a store while no app uses it.

const { parseArgs } = require('node:util')

const USAGE = `Usage: pixstore <command> [--database <path>] [--images <dir>]

Commands:
  downgrade   Give every image file pixstore 3.x's name (KEY.pixstore-image), so that
              pixstore 3.x can open the store again. Stop every app using the store first.

Options:
  --database <path>   the SQLite database (default ./.pixstore.sqlite)
  --images <dir>      the image root (default pixstore-images)
  -h, --help          show this help
`

async function main(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      database: { type: 'string', default: './.pixstore.sqlite' },
      images: { type: 'string', default: 'pixstore-images' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const [command, ...extra] = positionals
  if (values.help || command === undefined) {
    process.stdout.write(USAGE)
    return values.help ? 0 : 2
  }
  if (command !== 'downgrade' || extra.length > 0) {
    process.stderr.write(`pixstore: unknown command ${JSON.stringify(positionals.join(' '))}\n\n`)
    process.stderr.write(USAGE)
    return 2
  }

  const fs = require('node:fs')
  if (!fs.existsSync(values.database)) {
    process.stderr.write(
      `pixstore: no database at ${JSON.stringify(values.database)}: pass the databasePath your ` +
        'app uses with --database (and its imageRootDir with --images)\n',
    )
    return 1
  }
  if (!fs.existsSync(values.images)) {
    process.stderr.write(
      `pixstore: no image root at ${JSON.stringify(values.images)}: pass the imageRootDir your ` +
        'app uses with --images\n',
    )
    return 1
  }

  const backend = require('../lib/backend.js')
  const native = require('../lib/native.js')
  const { settle } = require('../lib/errors.js')
  backend.initPixstoreBackend({
    databasePath: values.database,
    imageRootDir: values.images,
    defaultEndpointEnabled: false,
    errorHandlingMode: 'throw',
  })
  const started = Date.now()
  let report
  try {
    report = settle(await native.downgradeToLegacyNames())
  } finally {
    await backend.closePixstoreBackend()
  }
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

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`pixstore: ${err.code ? `${err.code}: ` : ''}${err.message}\n`)
    process.exit(1)
  },
)
