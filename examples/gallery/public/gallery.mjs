// The gallery page: the server hands out records, pixstore/frontend turns them into images.

import { initPixstoreFrontend, getImage, deleteCachedImage, PixstoreError } from 'pixstore/frontend'

// The server answers image requests itself, at the default route, on the page's own origin.
initPixstoreFrontend({ defaultEndpointConnectHost: location.origin, errorHandlingMode: 'throw' })

const photos = document.querySelector('#photos')
const template = document.querySelector('#photo-card')
const statusLine = document.querySelector('#status')
const empty = document.querySelector('#empty')

function setStatus(text, isError = false) {
  statusLine.textContent = text
  statusLine.classList.toggle('error', isError)
}

async function api(method, url, body, fileName) {
  const headers = fileName ? { 'x-file-name': encodeURIComponent(fileName) } : {}
  const response = await fetch(url, { method, body, headers })
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}))
    throw new Error(answer.error ?? `${method} ${url} answered ${response.status}`)
  }
  return response.status === 204 ? null : response.json()
}

// Counts the image requests the browser module makes, to show where each photo came from.
const IMAGE_ROUTE = '/pixstore-image/'
const imageRequests = new Map()
const browserFetch = globalThis.fetch.bind(globalThis)
globalThis.fetch = (input, init) => {
  const { pathname } = new URL(input instanceof Request ? input.url : input, location.href)
  if (pathname.startsWith(IMAGE_ROUTE)) {
    const id = decodeURIComponent(pathname.slice(IMAGE_ROUTE.length))
    imageRequests.set(id, (imageRequests.get(id) ?? 0) + 1)
  }
  return browserFetch(input, init)
}

/** The image of a record; an expired proof is renewed once with a fresh record. */
async function imageOf(record) {
  try {
    return { blob: await getImage(record), record }
  } catch (err) {
    if (!(err instanceof PixstoreError) || err.code !== 'INVALID_PROOF') throw err
    const fresh = await api('GET', `/api/photos/${encodeURIComponent(record.id)}/record`)
    return { blob: await getImage(fresh), record: fresh }
  }
}

async function show(card, photo) {
  const img = card.querySelector('img')
  card.dataset.state = 'loading'
  card.querySelector('.name').textContent = photo.name
  img.alt = photo.name

  try {
    const requestsBefore = imageRequests.get(photo.id) ?? 0
    const { blob, record } = await imageOf(photo.record)
    const previous = img.src
    img.src = URL.createObjectURL(blob)
    await img.decode()
    if (previous) URL.revokeObjectURL(previous)

    const source = (imageRequests.get(photo.id) ?? 0) > requestsBefore ? 'network' : 'cache'
    Object.assign(card.dataset, { token: String(record.token), type: blob.type, source })
    card.querySelector('.facts').textContent =
      `${img.naturalWidth} × ${img.naturalHeight} · ${blob.type} · ` +
      `${Math.round(blob.size / 1024)} KB · from ${source}`
    card.dataset.state = 'ready'
  } catch (err) {
    card.dataset.state = 'error'
    card.querySelector('.facts').textContent = err.message
  }
}

function addCard(photo) {
  const card = template.content.firstElementChild.cloneNode(true)
  card.dataset.id = photo.id

  card.querySelector('.replace').addEventListener('change', async (event) => {
    const [file] = event.target.files
    event.target.value = ''
    if (!file) return
    try {
      setStatus(`Replacing ${photo.name}…`)
      const updated = await api(
        'PUT',
        `/api/photos/${encodeURIComponent(photo.id)}`,
        file,
        file.name,
      )
      await show(card, updated)
      setStatus(`Replaced with ${file.name}.`)
    } catch (err) {
      setStatus(err.message, true)
    }
  })

  card.querySelector('.delete').addEventListener('click', async () => {
    try {
      await api('DELETE', `/api/photos/${encodeURIComponent(photo.id)}`)
      await deleteCachedImage(photo.id)
      URL.revokeObjectURL(card.querySelector('img').src)
      card.remove()
      empty.hidden = photos.children.length > 0
      setStatus(`Deleted ${photo.name}.`)
    } catch (err) {
      setStatus(err.message, true)
    }
  })

  photos.append(card)
  empty.hidden = true
  return show(card, photo)
}

document.querySelector('#upload').addEventListener('change', async (event) => {
  const files = [...event.target.files]
  event.target.value = ''
  for (const file of files) {
    try {
      setStatus(`Uploading ${file.name}…`)
      await addCard(await api('POST', '/api/photos', file, file.name))
      setStatus(`Uploaded ${file.name}.`)
    } catch (err) {
      setStatus(`${file.name}: ${err.message}`, true)
    }
  }
})

try {
  const list = await api('GET', '/api/photos')
  empty.hidden = list.length > 0
  await Promise.all(list.map(addCard))
} catch (err) {
  setStatus(err.message, true)
} finally {
  document.body.dataset.loaded = 'true'
}
