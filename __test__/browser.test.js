'use strict'

// The whole path in a real browser: the gallery example (pixstore/backend behind Express) and
// its page (pixstore/frontend) in headless Chromium, Debian's build driven by playwright-core.
// The steps share one gallery, one browser and one page, and run in order.

const { spawn } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const { chromium } = require('playwright-core')

const { assetPath, encryptedFileOf, freePort, JsonLines } = require('./helpers.js')

const REPO = path.join(__dirname, '..')
const CHROMIUM = '/usr/bin/chromium'
const ARTIFACTS = path.join(__dirname, 'artifacts')
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex')

/** Width and height from a JPEG's start-of-frame segment. */
function jpegSize(bytes) {
  let at = 2
  while (at + 9 < bytes.length) {
    if (bytes[at] !== 0xff) throw new Error(`no JPEG marker at byte ${at}`)
    const marker = bytes[at + 1]
    const length = bytes.readUInt16BE(at + 2)
    const startOfFrame = marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)
    if (startOfFrame)
      return { width: bytes.readUInt16BE(at + 7), height: bytes.readUInt16BE(at + 5) }
    at += 2 + length
  }
  throw new Error('no start-of-frame segment')
}

/** Starts the gallery on a port the OS picks; resolves `{ child, url }` once it listens. */
function startGallery(dataDir) {
  const child = spawn(process.execPath, [path.join(REPO, 'examples', 'gallery', 'server.mjs')], {
    cwd: REPO,
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', GALLERY_DATA_DIR: dataDir },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the gallery did not start:\n${output}`)),
      20_000,
    )
    const take = (chunk) => {
      output += chunk
      const address = /Pixstore gallery: (http:\/\/\S+)/.exec(output)
      if (address) {
        clearTimeout(timer)
        resolve({ child, url: address[1], output: () => output })
      }
    }
    child.stdout.on('data', take)
    child.stderr.on('data', take)
    child.on('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`the gallery exited with ${code}:\n${output}`))
    })
  })
}

describe('the gallery in headless Chromium', () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-gallery-'))
  const imageRoot = path.join(dataDir, 'images')
  let gallery
  let browser
  let page
  const imageRequests = []
  const pageErrors = []
  const records = new Map() // every record seen, by id and token: their meta must stay out of the cache
  const photo = {} // the photo that is uploaded, replaced and deleted

  /** The gallery's photo list, straight from its API; remembers every record. */
  async function listPhotos() {
    const list = await (await fetch(`${gallery.url}api/photos`)).json()
    for (const item of list) records.set(`${item.id}@${item.record.token}`, item.record)
    return list
  }

  /** What the page shows for a photo, once its card is ready. */
  async function card(id) {
    const selector = `.photo[data-id="${id}"][data-state="ready"]`
    await page.waitForSelector(selector)
    return page.$eval(selector, async (figure) => {
      const img = figure.querySelector('img')
      const bytes = await (await fetch(img.src)).arrayBuffer()
      const digest = await crypto.subtle.digest('SHA-256', bytes)
      return {
        width: img.naturalWidth,
        height: img.naturalHeight,
        type: figure.dataset.type,
        token: Number(figure.dataset.token),
        source: figure.dataset.source,
        sha256: [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join(''),
      }
    })
  }

  /** The ids of the cards on the page. */
  const cardIds = () => page.$$eval('.photo', (cards) => cards.map((c) => c.dataset.id))

  /** Every entry of the page's IndexedDB cache, with what the checks need from its bytes. */
  function cacheEntries(secrets) {
    return page.evaluate(async (secrets) => {
      const db = await new Promise((resolve, reject) => {
        const request = indexedDB.open('pixstore')
        request.onsuccess = () => resolve(request.result)
        request.onerror = () => reject(request.error)
      })
      const entries = await new Promise((resolve, reject) => {
        const all = db.transaction('images').objectStore('images').getAll()
        all.onsuccess = () => resolve(all.result)
        all.onerror = () => reject(all.error)
      })
      db.close()

      const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0))
      const needles = secrets.flatMap((s) => [
        fromBase64(s.meta.key),
        fromBase64(s.meta.iv),
        fromBase64(s.meta.tag),
        new TextEncoder().encode(s.statelessProof),
      ])
      const contains = (haystack, needle) => {
        outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
          for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer
          return true
        }
        return false
      }
      const texts = secrets.flatMap((s) => [s.meta.key, s.meta.iv, s.meta.tag, s.statelessProof])
      return Promise.all(
        entries.map(async (entry) => {
          const digest = await crypto.subtle.digest('SHA-256', entry.encrypted)
          const rest = JSON.stringify({ ...entry, encrypted: null })
          return {
            id: entry.id,
            token: entry.token,
            fields: Object.keys(entry).sort(),
            encrypted: Object.prototype.toString.call(entry.encrypted),
            lastUsedIsTime: Number.isFinite(entry.lastUsed) && entry.lastUsed > 1e12,
            holdsSecretBytes: needles.some((needle) => contains(entry.encrypted, needle)),
            holdsSecretText: texts.some((text) => rest.includes(text)),
            sha256: [...new Uint8Array(digest)]
              .map((b) => b.toString(16).padStart(2, '0'))
              .join(''),
          }
        }),
      )
    }, secrets)
  }

  beforeAll(async () => {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: apt-get install chromium (.ci/run does it)`)
    }
    gallery = await startGallery(dataDir)
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
    page = await browser.newPage({ viewport: { width: 1280, height: 760 } })
    page.on('request', (request) => {
      if (new URL(request.url()).pathname.startsWith('/pixstore-image/')) {
        imageRequests.push(request.url())
      }
    })
    page.on('pageerror', (err) => pageErrors.push(err.message))
    page.on('console', (message) => {
      if (message.type() === 'error')
        pageErrors.push(`${message.text()} (${message.location().url})`)
    })
    await page.goto(gallery.url)
    await page.waitForSelector('body[data-loaded="true"]')
  }, 60_000)

  afterAll(async () => {
    await browser?.close()
    if (gallery) {
      const exited = new Promise((resolve) => gallery.child.once('exit', resolve))
      gallery.child.kill('SIGTERM')
      await exited
    }
    fs.rmSync(dataDir, { recursive: true, force: true })
  })

  test('an uploaded photo is shown with the original width and height', async () => {
    expect(await cardIds()).toEqual([])

    await page.setInputFiles('#upload', assetPath('vilnius.jpg'))
    await page.waitForSelector('.photo[data-state="ready"]')
    ;[photo.id] = await cardIds()
    const shown = await card(photo.id)

    const original = fs.readFileSync(assetPath('vilnius.jpg'))
    expect(jpegSize(original)).toEqual({ width: 1600, height: 1067 })
    expect(shown).toEqual({
      ...jpegSize(original),
      type: 'image/jpeg',
      token: expect.any(Number),
      source: 'network',
      sha256: sha256(original),
    })
    expect(imageRequests).toEqual([`${gallery.url}pixstore-image/${encodeURIComponent(photo.id)}`])
    photo.firstToken = shown.token
    await listPhotos()
  })

  test('a replaced photo is shown as the new one', async () => {
    // A second photo, so that the gallery has more than one to show.
    await page.setInputFiles('#upload', assetPath('vilnius-800.webp'))
    await page.waitForFunction(
      () => document.querySelectorAll('.photo[data-state="ready"]').length === 2,
    )

    await page.setInputFiles(`.photo[data-id="${photo.id}"] .replace`, assetPath('antalya.jpg'))
    await page.waitForSelector(
      `.photo[data-id="${photo.id}"]:not([data-token="${photo.firstToken}"])`,
    )
    const shown = await card(photo.id)

    const replacement = fs.readFileSync(assetPath('antalya.jpg'))
    expect(shown).toEqual({
      ...jpegSize(replacement),
      type: 'image/jpeg',
      token: expect.any(Number),
      source: 'network',
      sha256: sha256(replacement),
    })
    expect(shown.token).toBeGreaterThan(photo.firstToken)
    expect(imageRequests).toHaveLength(3)
    await listPhotos()

    fs.mkdirSync(ARTIFACTS, { recursive: true })
    const screenshot = path.join(ARTIFACTS, 'gallery.png')
    await page.screenshot({ path: screenshot, fullPage: true })
    const png = fs.readFileSync(screenshot)
    expect(png.subarray(1, 4).toString()).toBe('PNG')
    expect(png.length).toBeGreaterThan(20_000)
  })

  test('the IndexedDB cache holds the ciphertext as served, and no key, IV, tag or proof', async () => {
    const list = await listPhotos()
    const entries = await cacheEntries([...records.values()])
    expect(entries).toHaveLength(2)
    for (const entry of entries) {
      const current = list.find((item) => item.id === entry.id).record
      expect(entry).toEqual({
        id: current.id,
        token: current.token,
        fields: ['encrypted', 'id', 'lastUsed', 'token'],
        encrypted: '[object Uint8Array]',
        lastUsedIsTime: true,
        holdsSecretBytes: false,
        holdsSecretText: false,
        sha256: sha256(fs.readFileSync(encryptedFileOf(imageRoot, entry.id))),
      })
    }
    // The records checked against: the first photo before and after its replacement, the second.
    expect(records.size).toBe(3)
  })

  test('after a reload, the photos come from the cache: no image request', async () => {
    imageRequests.length = 0
    await page.reload()
    await page.waitForSelector('body[data-loaded="true"]')
    expect(await cardIds()).toHaveLength(2)

    const shown = await card(photo.id)
    expect(shown).toEqual({
      ...jpegSize(fs.readFileSync(assetPath('antalya.jpg'))),
      type: 'image/jpeg',
      token: expect.any(Number),
      source: 'cache',
      sha256: sha256(fs.readFileSync(assetPath('antalya.jpg'))),
    })
    for (const id of await cardIds()) expect((await card(id)).source).toBe('cache')
    expect(imageRequests).toEqual([])
  })

  test('a deleted photo is gone: from the page, the server, the cache and the endpoint', async () => {
    const [before] = (await listPhotos()).filter((item) => item.id === photo.id)

    await page.click(`.photo[data-id="${photo.id}"] .delete`)
    await page.waitForSelector(`.photo[data-id="${photo.id}"]`, { state: 'detached' })
    expect(await cardIds()).toHaveLength(1)
    expect((await listPhotos()).map((item) => item.id)).not.toContain(photo.id)

    const cached = (await cacheEntries([])).map((entry) => entry.id)
    expect(cached).toHaveLength(1)
    expect(cached).not.toContain(photo.id)

    // The record the page had, with a proof still valid, now finds nothing.
    const code = await page.evaluate(async (record) => {
      const frontend = await import('/pixstore/frontend/index.mjs')
      try {
        await frontend.getImage(record)
        return 'loaded'
      } catch (err) {
        return err.code
      }
    }, before.record)
    expect(code).toBe('NOT_FOUND')

    await page.reload()
    await page.waitForSelector('body[data-loaded="true"]')
    expect(await cardIds()).not.toContain(photo.id)
    expect(await cardIds()).toHaveLength(1)
  })

  test('the native default endpoint serves a page of another origin (CORS preflight)', async () => {
    const port = await freePort()
    const endpoint = spawn(
      process.execPath,
      [path.join(__dirname, 'fixtures', 'frontend-native-endpoint.mjs'), String(port)],
      { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] },
    )
    try {
      const { record } = await new JsonLines(endpoint.stdout).next('record')
      const requested = []
      const other = await browser.newPage()
      other.on('request', (request) => {
        if (request.url().startsWith(`http://127.0.0.1:${port}/`)) requested.push(request.method())
      })
      await other.goto(gallery.url)
      await other.waitForSelector('body[data-loaded="true"]')

      const seen = await other.evaluate(
        async ({ record, port }) => {
          const frontend = await import('/pixstore/frontend/index.mjs')
          const show = async (config) => {
            frontend.initPixstoreFrontend({ ...config, errorHandlingMode: 'throw' })
            await frontend.deleteCachedImage(record.id)
            const blob = await frontend.getImage(record)
            const bitmap = await createImageBitmap(blob)
            return { type: blob.type, width: bitmap.width, height: bitmap.height }
          }
          return {
            byOrigin: await show({ defaultEndpointConnectHost: `http://127.0.0.1:${port}` }),
            byHostAndPort: await show({
              defaultEndpointConnectHost: '127.0.0.1',
              defaultEndpointConnectPort: port,
            }),
            fromCache: await frontend.cachedImageExists(record.id),
          }
        },
        { record, port },
      )
      await other.close()

      const image = { type: 'image/png', width: 800, height: 533 }
      expect(seen).toEqual({ byOrigin: image, byHostAndPort: image, fromCache: true })
      expect(requested.filter((method) => method === 'GET')).toHaveLength(2)
    } finally {
      const exited = new Promise((resolve) => endpoint.once('exit', resolve))
      endpoint.kill('SIGTERM')
      await exited
    }
  })

  test('the page logged no error', () => {
    expect(pageErrors).toEqual([])
  })
})
