# LopSo node image: one process per container (all-in-one, origin or edge by LOPSO_ROLE).
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY media ./media
COPY web ./web
RUN pip install --no-cache-dir '.[fast]'
ENV LOPSO_HOST=0.0.0.0 LOPSO_DATA=/data
VOLUME ["/data"]
EXPOSE 8080/tcp
ENTRYPOINT ["lopso"]
CMD ["serve"]
