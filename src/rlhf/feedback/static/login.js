import { $, api, clearError, showError } from './common.js';

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearError();
  const button = event.currentTarget.querySelector('button');
  button.disabled = true;
  try {
    const me = await api('POST', '/api/login', { token: $('token').value.trim() });
    location.assign(me.role === 'admin' ? '/admin' : '/annotate');
  } catch (error) {
    showError(error.message);
    button.disabled = false;
    $('token').select();
  }
});
