import GantryWorkerApp

/// `gantry-worker`: consumes tasks from the configured queues and runs them with the built-in
/// tasks. The whole executable lives in ``WorkerApp`` so that users can build their own worker
/// with their own tasks in one call.
@main
enum WorkerMain {
    static func main() async {
        await WorkerApp.main()
    }
}
