import WebSocket from 'ws';

async function testVoiceWebSocket() {
  const ws = new WebSocket('ws://localhost:5000/voice-ws', {
    headers: { 'Authorization': 'Bearer ' + JWT_TOKEN }
  });
  
  ws.on('open', () => {
    console.log('Voice WebSocket connected');
    
    // Send test audio frame
    const testFrame = new ArrayBuffer(1920); // 20ms at 48kHz
    ws.send(testFrame);
  });
  
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      console.log('Received audio response:', data.length, 'bytes');
    } else {
      console.log('Received message:', JSON.parse(data.toString()));
    }
  });
}
