// LISTEN/NOTIFY → WebSocket bridge, as a Go user would write it: gorilla/websocket + lib/pq,
// one goroutine pair per client (the gorilla chat example's read and write pumps).
//
//	DATABASE_URL=postgres://… PORT=8082 go-bridge
//	ws://127.0.0.1:8082/ws?account=<account_id>   each message: one row's JSON (the NOTIFY payload)
//
// One LISTEN connection (pq.Listener); each notification is parsed for its account_id and put on
// the send channel of that account's clients. The channel holds queueLimit messages: a client
// whose channel is full is dropped, as a real bridge must.
package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/lib/pq"
)

const (
	channelName = "bridge"
	writeWait   = 10 * time.Second
	pongWait    = 60 * time.Second
	pingPeriod  = (pongWait * 9) / 10
)

var queueLimit = 1024

type client struct {
	conn    *websocket.Conn
	account string
	send    chan []byte
}

type hub struct {
	mu        sync.RWMutex
	byAccount map[string]map[*client]struct{}
	dropped   int
}

func (h *hub) add(c *client) {
	h.mu.Lock()
	set := h.byAccount[c.account]
	if set == nil {
		set = make(map[*client]struct{})
		h.byAccount[c.account] = set
	}
	set[c] = struct{}{}
	h.mu.Unlock()
}

// remove unregisters c and closes its send channel (once).
func (h *hub) remove(c *client) {
	h.mu.Lock()
	if set, ok := h.byAccount[c.account]; ok {
		if _, ok := set[c]; ok {
			delete(set, c)
			close(c.send)
			if len(set) == 0 {
				delete(h.byAccount, c.account)
			}
		}
	}
	h.mu.Unlock()
}

func (h *hub) broadcast(account string, payload []byte) {
	var full []*client
	h.mu.RLock()
	for c := range h.byAccount[account] {
		select {
		case c.send <- payload:
		default:
			full = append(full, c)
		}
	}
	h.mu.RUnlock()
	for _, c := range full {
		h.mu.Lock()
		h.dropped++
		h.mu.Unlock()
		h.remove(c)
		c.conn.Close()
	}
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	CheckOrigin:     func(r *http.Request) bool { return true },
}

func (h *hub) serveWS(w http.ResponseWriter, r *http.Request) {
	account := r.URL.Query().Get("account")
	if account == "" {
		http.Error(w, "account required", http.StatusBadRequest)
		return
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &client{conn: conn, account: account, send: make(chan []byte, queueLimit)}
	h.add(c)
	go c.writePump()
	go c.readPump(h)
}

func (c *client) readPump(h *hub) {
	defer func() {
		h.remove(c)
		c.conn.Close()
	}()
	c.conn.SetReadLimit(4096)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
	for {
		if _, _, err := c.conn.ReadMessage(); err != nil {
			return
		}
	}
}

func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case msg, ok := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if err := c.conn.WriteMessage(websocket.TextMessage, msg); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

// listen opens the LISTEN connection; notifications are then routed by h.route.
func listen(dbURL string) *pq.Listener {
	// Fail fast on a bad URL (pq.Listener would retry forever).
	db, err := sql.Open("postgres", dbURL)
	if err == nil {
		err = db.Ping()
		db.Close()
	}
	if err != nil {
		log.Fatalf("postgres: %v", err)
	}
	listener := pq.NewListener(dbURL, time.Second, time.Minute, func(ev pq.ListenerEventType, err error) {
		if err != nil {
			log.Printf("listener: %v", err)
		}
	})
	if err := listener.Listen(channelName); err != nil {
		log.Fatalf("LISTEN %s: %v", channelName, err)
	}
	return listener
}

func (h *hub) route(listener *pq.Listener) {
	var row struct {
		AccountID string `json:"account_id"`
	}
	for n := range listener.Notify {
		if n == nil { // reconnected: notifications may have been lost
			continue
		}
		row.AccountID = ""
		if err := json.Unmarshal([]byte(n.Extra), &row); err != nil {
			continue
		}
		h.broadcast(row.AccountID, []byte(n.Extra))
	}
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8082"
	}
	host := os.Getenv("HOST")
	if host == "" {
		host = "127.0.0.1"
	}
	if q, err := strconv.Atoi(os.Getenv("QUEUE_LIMIT")); err == nil && q > 0 {
		queueLimit = q
	}
	h := &hub{byAccount: make(map[string]map[*client]struct{})}
	go h.route(listen(os.Getenv("DATABASE_URL")))

	mux := http.NewServeMux()
	mux.HandleFunc("/ws", h.serveWS)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		h.mu.RLock()
		log.Printf("stopping; %d clients dropped for a full queue", h.dropped)
		h.mu.RUnlock()
		os.Exit(0)
	}()
	log.Printf("go bridge on ws://%s:%s/ws (queue %d)", host, port, queueLimit)
	log.Fatal(http.ListenAndServe(host+":"+port, mux))
}
