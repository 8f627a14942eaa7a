// The /chat page: log in, join a room, read its history, then follow it live over a
// WebSocket; notifications arrive on a second WebSocket. The token travels in the
// Sec-WebSocket-Protocol header ("bearer", <token>), never in a URL.
"use strict";

const $ = (id) => document.getElementById(id);
const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
// API_V1_PREFIX, as the page states it (app/realtime/page.py).
const api = document.querySelector('meta[name="api-prefix"]').content;
const NO_RETRY = new Set([1008, 4401, 4403]);
let token = null;
let chat = null;
let room = null;
let lastMessageId = 0;
let lastNotificationId = 0;
const seen = new Set();

function status(text) { $("status").textContent = text; }

function line(list, text, className, who) {
  const item = document.createElement("li");
  if (className) item.className = className;
  if (who) {
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = who;
    item.append(name);
  }
  item.append(document.createTextNode(text));
  list.append(item);
  list.scrollTop = list.scrollHeight;
  return item;
}

function showMessage(message) {
  if (seen.has(message.id)) return;
  seen.add(message.id);
  lastMessageId = Math.max(lastMessageId, message.id);
  const item = line($("messages"), message.content, "message", message.user.username);
  item.dataset.id = message.id;
}

async function login(event) {
  event.preventDefault();
  const body = new URLSearchParams({ username: $("username").value, password: $("password").value });
  const response = await fetch(api + "/auth/token", { method: "POST", body });
  if (!response.ok) { status("login failed"); return; }
  token = (await response.json()).access_token;
  status("signed in as " + $("username").value);
  $("login-form").hidden = true;
  $("room-form").hidden = false;
  connectNotifications(0);
}

async function loadHistory(name) {
  const headers = { Authorization: "Bearer " + token };
  const rooms = await (await fetch(api + "/chat/rooms", { headers })).json();
  if (!rooms.some((known) => known.name === name)) return; // new: created when we join
  const response = await fetch(`${api}/chat/rooms/${encodeURIComponent(name)}/messages?limit=50`,
    { headers });
  if (!response.ok) return;
  const page = await response.json();
  page.items.reverse().forEach(showMessage);
}

async function join(event) {
  event.preventDefault();
  if (chat) { chat.onclose = null; chat.close(1000); }
  room = $("room").value;
  $("room-title").textContent = "#" + room;
  $("messages").replaceChildren();
  seen.clear();
  lastMessageId = 0;
  $("main").hidden = false;
  await loadHistory(room);
  connectChat(0);
}

function connectChat(attempt) {
  // last_id: anything sent between the history read and now (or while we were away).
  const socket = new WebSocket(`${wsBase}/ws/chat/${encodeURIComponent(room)}?last_id=${lastMessageId}`,
    ["bearer", token]);
  chat = socket;
  const pinger = setInterval(() => socket.readyState === 1 && socket.send('{"type":"ping"}'), 30000);
  socket.onopen = () => { attempt = 0; status("in #" + room); };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "message") showMessage(frame);
    else if (frame.type === "join" || frame.type === "leave") {
      line($("messages"), `${frame.user.username} ${frame.type === "join" ? "joined" : "left"}`, "event");
    } else if (frame.type === "typing") {
      $("typing").textContent = frame.user.username + " is typing…";
      setTimeout(() => { $("typing").textContent = ""; }, 2000);
    } else if (frame.type === "error") line($("messages"), frame.message, "event");
  };
  socket.onclose = (event) => {
    clearInterval(pinger);
    if (chat !== socket) return;
    status(`disconnected (${event.code})`);
    if (!NO_RETRY.has(event.code)) setTimeout(() => connectChat(attempt + 1), Math.min(500 * 2 ** attempt, 10000));
  };
}

function connectNotifications(attempt) {
  const socket = new WebSocket(`${wsBase}/ws/notifications?last_id=${lastNotificationId}`, ["bearer", token]);
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type !== "notification") return;
    lastNotificationId = Math.max(lastNotificationId, frame.id);
    const item = line($("notifications"), ` ${frame.body}`, "notification", frame.title);
    item.dataset.id = frame.id;
  };
  socket.onclose = (event) => {
    if (!NO_RETRY.has(event.code)) setTimeout(() => connectNotifications(attempt + 1), Math.min(500 * 2 ** attempt, 10000));
  };
}

function send(event) {
  event.preventDefault();
  const input = $("message-input");
  if (!chat || chat.readyState !== 1 || !input.value.trim()) return;
  chat.send(JSON.stringify({ type: "message", content: input.value }));
  input.value = "";
}

let lastTyping = 0;
function typing() {
  if (!chat || chat.readyState !== 1 || Date.now() - lastTyping < 3000) return;
  lastTyping = Date.now();
  chat.send('{"type":"typing"}');
}

$("login-form").addEventListener("submit", login);
$("room-form").addEventListener("submit", join);
$("send-form").addEventListener("submit", send);
$("message-input").addEventListener("input", typing);
