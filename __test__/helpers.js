'use strict'

// Shared by the suites: a fresh store folder per test file, and the real assets.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ASSETS = path.join(__dirname, '..', 'assets')

/** The bytes of a file in `assets/`. */
function asset(name) {
  return fs.readFileSync(path.join(ASSETS, name))
}

function assetPath(name) {
  return path.join(ASSETS, name)
}

/** A new empty folder, with the config that puts a store inside it. */
function freshStore(extra = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-test-'))
  return {
    dir,
    config: {
      imageRootDir: path.join(dir, 'images'),
      databasePath: path.join(dir, 'store.sqlite'),
      defaultEndpointEnabled: false,
      errorHandlingMode: 'throw',
      ...extra,
    },
  }
}

/** Every encrypted file under an image root, relative to it, sorted. */
function encryptedFiles(root) {
  if (!fs.existsSync(root)) return []
  return fs
    .readdirSync(root, { recursive: true })
    .filter((name) => name.endsWith('.pixstore-image'))
    .sort()
}

module.exports = { ASSETS, asset, assetPath, freshStore, encryptedFiles }
