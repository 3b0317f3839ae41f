import { io } from 'socket.io-client';

const socket = io('http://localhost:5000/voice', {
  auth: { token: JWT_TOKEN }
});

socket.on('connect', () => {
  console.log('Socket.IO voice connected');
  
  socket.emit('voice:start', {
    siteId: 'test-site',
    locale: 'en-US'
  });
});

socket.on('voice:session_ready', (data) => {
  console.log('Voice session ready:', data.sessionId);
});
